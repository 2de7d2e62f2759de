"""Waiting on ROS events by spinning, never by sleeping."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, SingleThreadedExecutor
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


def spin_until_signalled(executor: Executor, poll_s: float = 0.1) -> None:
    """Spin `executor` on a thread until SIGINT or SIGTERM, with the signals handled here rather than by rclpy.

    rclpy's own handler was seen, once under heavy load, to leave a node spinning after SIGTERM. A
    Python handler that only sets a flag cannot lose the request. The executor spins on its own thread
    because spin_once() in a loop busy-waits while a callback group is occupied. Initialise rclpy with
    `signal_handler_options=SignalHandlerOptions.NO` to use it.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    spinner = threading.Thread(target=executor.spin, name="executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(poll_s) and rclpy.ok() and spinner.is_alive():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        executor.shutdown()
        spinner.join()


def run_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None) -> None:
    """A console script's main: start the node, spin it until SIGINT/SIGTERM, clean up.

    A node that cannot start (bad checkpoint, bad parameter) exits 1 with one readable FATAL line.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = make_node()
    except Exception as err:  # any reason at all: one line, not a traceback
        rclpy.logging.get_logger(name).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        raise SystemExit(1) from err
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_signalled(executor)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
