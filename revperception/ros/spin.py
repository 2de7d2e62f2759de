"""Waiting on ROS events by spinning, never by sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from rclpy.node import Node


def spin_until(node: Node, done: Callable[[], bool], timeout_s: float) -> bool:
    """Spin `node` until `done()` is true or `timeout_s` passes; returns `done()`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rclpy.spin_once(node, timeout_sec=min(0.05, remaining))
    return True
