"""`revperception inject`: an anomaly schedule published live as std_msgs/Bool, like timed `ros2 topic pub`.

The publisher uses the perception node's own QoS, `qos.ANOMALY` (reliable, KEEP_ALL), so every flip reaches it.
Times count from the injector's start (after `wait_for` subscribers matched), or, with `relative_to="bag"`,
from the first /clock message, so a schedule follows a bag played with `replay --clock` or
`ros2 bag play --clock` at any rate.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool

from revperception.injection import Event, Schedule
from revperception.ros import qos
from revperception.ros.spin import signals_set, spinning, wait_polling
from revperception.tools.replay import ACK_TIMEOUT_S, ReplayError

CLOCK_POLL_S = 0.01  # how often bag time is checked between /clock messages (40 Hz from a player)


@dataclass
class InjectResult:
    """Events published, each with its wall time since the time base started; whether a signal cut it short."""

    published: list[tuple[float, Event]]
    interrupted: bool = False


class _BagTime:
    """Seconds of /clock time since the first /clock message seen."""

    def __init__(self, node: Node) -> None:
        self.first_ns: int | None = None
        self.latest_ns = 0
        node.create_subscription(Clock, "/clock", self._on_clock,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _on_clock(self, msg: Clock) -> None:
        self.latest_ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
        if self.first_ns is None:
            self.first_ns = self.latest_ns

    def elapsed(self) -> float:
        return 0.0 if self.first_ns is None else (self.latest_ns - self.first_ns) / 1e9


def inject(schedule: Schedule, relative_to: str = "start", wait_for: int = 0, wait_timeout_s: float = 30.0,
           ) -> InjectResult:
    """Publish `schedule` on its topic at its times; see the module docstring."""
    if relative_to not in ("start", "bag"):
        raise ReplayError(f"--relative-to must be start or bag, got {relative_to!r}")
    stop = threading.Event()
    published: list[tuple[float, Event]] = []
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    with ExitStack() as stack:
        stack.callback(rclpy.try_shutdown)
        stack.enter_context(signals_set(stop))
        node = Node("revperception_inject")
        stack.callback(node.destroy_node)
        publisher = node.create_publisher(Bool, schedule.topic, qos.ANOMALY)
        bag_time = _BagTime(node) if relative_to == "bag" else None
        stack.enter_context(spinning(node))
        if not wait_polling(lambda: publisher.get_subscription_count() >= wait_for, stop, wait_timeout_s) \
                and not stop.is_set():
            raise ReplayError(f"fewer than {wait_for} subscribers on {publisher.topic_name} after {wait_timeout_s:g} s")
        if bag_time is not None and not wait_polling(lambda: bag_time.first_ns is not None, stop, wait_timeout_s) \
                and not stop.is_set():
            raise ReplayError(f"no /clock within {wait_timeout_s:g} s: play the bag with --clock")
        began = time.monotonic()
        elapsed = bag_time.elapsed if bag_time is not None else lambda: time.monotonic() - began
        for event in schedule.events:
            while (remaining := event.at - elapsed()) > 0:
                if stop.wait(remaining if bag_time is None else CLOCK_POLL_S):
                    return InjectResult(published, interrupted=True)
            publisher.publish(Bool(data=event.value))
            published.append((time.monotonic() - began, event))
            print(f"inject: {event.at:.2f} s {publisher.topic_name} {str(event.value).lower()}", flush=True)
        publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
    return InjectResult(published, interrupted=stop.is_set())
