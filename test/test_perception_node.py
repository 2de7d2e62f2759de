"""The node as a vehicle starts it: its console script with --ros-args, talking over DDS."""

from __future__ import annotations

import subprocess

from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from conftest import BIN, stop_process
from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame


def test_node_answers_frames_with_detections(ros_context: None) -> None:
    node_proc = subprocess.Popen([
        str(BIN / "perception_node"), "--ros-args", "-p", "weights:=yolov5n.yaml", "-p", "imgsz:=320",
        "-p", "image_qos:=reliable", "-r", "image:=/cam/image_raw", "-r", "detections:=/cam/detections",
    ])
    node = Node("node_test")
    try:
        replies: list[Detection2DArray] = []
        publisher = node.create_publisher(Image, "/cam/image_raw", qos.IMAGE_RELIABLE)
        node.create_subscription(Detection2DArray, "/cam/detections", replies.append, qos.DETECTIONS)
        assert spin_until(node, lambda: publisher.get_subscription_count() > 0, 120.0), "node never subscribed"
        headers = [Header(stamp=Time(sec=s), frame_id="cam") for s in (1, 2, 3)]
        for i, header in enumerate(headers):
            publisher.publish(bgr_to_image(road_frame(i), header))
            assert spin_until(node, lambda n=i + 1: len(replies) >= n, 60.0), f"no detections for frame {i}"
        assert [r.header for r in replies] == headers
        assert node_proc.poll() is None
    finally:
        node.destroy_node()
        stop_process(node_proc)


def test_bad_weights_exit_non_zero_with_a_readable_line() -> None:
    proc = subprocess.run(
        [str(BIN / "perception_node"), "--ros-args", "-p", "weights:=/nonexistent/model.pt"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "cannot start: no such checkpoint: /nonexistent/model.pt" in proc.stderr
