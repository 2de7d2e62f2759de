"""Waiting on ROS events by spinning, never by sleeping; signals and executor threads for the nodes and the tools."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def spin_until(node: Node, done: Callable[[], bool], timeout_s: float) -> bool:
    """Spin `node` until `done()` is true or `timeout_s` passes; returns `done()`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rclpy.spin_once(node, timeout_sec=min(0.05, remaining))
    return True


class _StartInterruptedError(BaseException):
    """SIGINT or SIGTERM while the node was still starting: like KeyboardInterrupt, no `except Exception` (a
    transition callback's catch-all) may take it for a failure to start."""


@contextmanager
def signals_set(event: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `event` while inside (the tools' way; a node's main keeps them to the end: run_node)."""
    previous = {sig: signal.signal(sig, lambda *_: event.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def spinning(node: Node) -> Iterator[None]:
    """`node`'s callbacks served on an executor thread while inside; stopped and joined on the way out."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="executor", daemon=True)
    spinner.start()
    try:
        yield
    finally:
        executor.shutdown()
        spinner.join()


def wait_polling(condition: Callable[[], bool], stop: threading.Event, timeout_s: float) -> bool:
    """Poll `condition` (graph state, updated by the middleware's threads) until true, stopped or timed out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if stop.wait(0.02) or time.monotonic() > deadline:
            return condition()
    return True


def run_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None) -> None:
    """A console script's main: start the node, spin it until SIGINT/SIGTERM, clean up, exit 0.

    SIGINT and SIGTERM are handled here, not by rclpy, from before the node starts until the process ends:
    a flag cannot lose the request (rclpy's handler was seen, once under heavy load, to leave a node spinning
    after SIGTERM), and `ros2 launch` on Ctrl-C delivers SIGINT twice (the terminal's, then its own), so
    Python's default handler must never be back while the node cleans up: it would die by the signal and
    launch would log "process has died [exit code -2]". A signal while the node is still starting stops the
    start. A node that cannot start (bad checkpoint, bad parameter) exits 1 with one readable FATAL line.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop, started = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not started.is_set():
            raise _StartInterruptedError

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = None
    try:
        node = make_node()
        started.set()
    except _StartInterruptedError:
        pass
    except Exception as err:  # any reason at all: one line, not a traceback
        started.set()
        rclpy.logging.get_logger(name).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        raise SystemExit(1) from err
    started.set()
    try:
        if node is not None and not stop.is_set():
            with spinning(node):
                while not stop.wait(0.1) and rclpy.ok():
                    pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
