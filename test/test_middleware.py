"""The real middleware: two processes exchange sensor_msgs/Image and vision_msgs/Detection2DArray over DDS."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from conftest import resending, stop_process
from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until

pytestmark = pytest.mark.ros

HELPERS = Path(__file__).parent / "helpers"


def test_image_and_detections_cross_processes(ros_context: None) -> None:
    responder = subprocess.Popen([sys.executable, str(HELPERS / "image_responder.py")])
    node = Node("middleware_test")
    try:
        replies: list[Detection2DArray] = []
        publisher = node.create_publisher(Image, "image", qos.IMAGE_RELIABLE)
        node.create_subscription(Detection2DArray, "reply", replies.append, qos.DETECTIONS)
        assert spin_until(node, lambda: publisher.get_subscription_count() > 0 and
                          node.count_publishers("reply") > 0, 60.0), "responder process never appeared"

        frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        header = Header(stamp=Time(sec=42, nanosec=7), frame_id="camera")
        image = bgr_to_image(frame, header)
        assert spin_until(node, resending(publisher, image, lambda: bool(replies)), 30.0), "no reply came back"

        reply = replies[0]
        assert reply.header == header
        (det,) = reply.detections
        assert det.results[0].hypothesis.class_id == f"64x48:{zlib.crc32(frame.tobytes())}"
        assert (det.bbox.center.position.x, det.bbox.center.position.y) == (32.0, 24.0)
        assert (det.bbox.size_x, det.bbox.size_y) == (64.0, 48.0)
        assert responder.poll() is None, "the responder process died"
    finally:
        node.destroy_node()
        stop_process(responder)
