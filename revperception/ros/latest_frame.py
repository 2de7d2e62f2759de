"""The newest camera frame, pulled by the inference worker rather than pushed through the executor.

A camera usually outpaces the model. Through the executor every frame would cost a wake-up of rclpy's
Python executor (interpreter time, holding the lock the inference thread needs; docs/node.md) only to be
replaced by the next one. Here the image subscription sits in a callback group the executor never waits on;
the worker waits on the subscription itself (in C, without the interpreter lock), takes every waiting frame
when it is ready for one, keeps the newest and counts the others as dropped. Frames stay serialized until
the worker decodes the one it keeps.
"""

from __future__ import annotations

from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.guard_condition import GuardCondition
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy  # as rclpy's wait_for_message
from rclpy.node import Node
from rclpy.qos import QoSProfile


class _PulledByWorker(CallbackGroup):
    """A callback group the executor leaves alone: it never waits on or takes from its entities."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        pass


def _never_called(_: Any) -> None:
    raise AssertionError("frames are taken by LatestFrame.take, not by an executor")


class LatestFrame:
    """A raw subscription that yields only its newest message; see the module docstring.

    `take()` belongs to one thread (the worker); `close()` may come from any. Frames that DDS itself
    overwrote beyond the QoS depth before the worker looked are not seen, so not counted.
    """

    def __init__(self, node: Node, msg_type: type, topic: str, qos: QoSProfile) -> None:
        self._node = node
        self._sub = node.create_subscription(msg_type, topic, _never_called, qos, callback_group=_PulledByWorker(),
                                             raw=True)
        self._wake = GuardCondition(None, None, context=node.context)
        self._wait_set = _rclpy.WaitSet(1, 1, 0, 0, 0, 0, node.context.handle)
        self._closed = False
        self.dropped = 0
        self.topic_name: str = self._sub.topic_name

    def take(self) -> bytes | None:
        """The newest serialized frame, waiting for one; None once closed."""
        while not self._closed:
            newest = None
            with self._sub.handle, self._wake.handle:
                self._wait_set.clear_entities()
                self._wait_set.add_subscription(self._sub.handle)
                self._wait_set.add_guard_condition(self._wake.handle)
                self._wait_set.wait(-1)
                while (taken := self._sub.handle.take_message(self._sub.msg_type, True)) is not None:
                    if newest is not None:
                        self.dropped += 1
                    newest = taken[0]
            if newest is not None and not self._closed:
                return newest
        return None

    def close(self) -> None:
        """Wake and end a waiting `take()`; call `destroy()` once the worker has returned."""
        self._closed = True
        self._wake.trigger()

    def destroy(self) -> None:
        self._node.destroy_subscription(self._sub)
        self._wake.destroy()
