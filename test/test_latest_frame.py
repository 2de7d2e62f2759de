"""LatestFrame over real DDS: the worker gets the newest frame, counts the rest, and the executor never sees them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from revperception.ros import qos
from revperception.ros.latest_frame import LatestFrame
from revperception.ros.spin import spin_until

pytestmark = pytest.mark.ros


@pytest.fixture
def camera_and_frames(ros_context: None) -> Iterator[tuple[Node, object, LatestFrame, SingleThreadedExecutor]]:
    camera, worker = Node("camera", namespace="/latest_frame"), Node("worker", namespace="/latest_frame")
    publisher = camera.create_publisher(Image, "image", qos.IMAGE_RELIABLE)
    frames = LatestFrame(worker, Image, "image", qos.IMAGE_RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(worker)
    assert spin_until(camera, lambda: publisher.get_subscription_count() == 1, 30)
    try:
        yield camera, publisher, frames, executor
    finally:
        frames.close()
        frames.destroy()
        executor.shutdown()
        camera.destroy_node()
        worker.destroy_node()


def test_take_returns_the_newest_frame_and_counts_the_others(camera_and_frames) -> None:
    _, publisher, frames, executor = camera_and_frames
    for stamp in (1, 2, 3):
        publisher.publish(Image(header=Header(stamp=Time(sec=stamp)), height=1, width=1, encoding="mono8", step=1,
                                data=bytes([stamp])))
    assert publisher.wait_for_all_acked(Duration(seconds=30))  # all three wait in the reader's history
    for _ in range(3):
        executor.spin_once(timeout_sec=0)  # would run the subscription's callback, which raises, if it saw a frame
    newest = deserialize_message(frames.take(), Image)
    assert newest.header.stamp.sec == 3 and bytes(newest.data) == b"\x03"
    assert frames.dropped == 2


def test_close_ends_a_waiting_take(camera_and_frames) -> None:
    _, _, frames, _ = camera_and_frames
    taken: list[object] = []
    worker = threading.Thread(target=lambda: taken.append(frames.take()))
    worker.start()
    frames.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and taken == [None]
