"""The end-to-end demo: frames over DDS into the perception node process, detections back.

Everything is real: the node runs as its own process, started as `ros2 run` would start it, and
frames and detections cross Fast DDS. Exits non-zero when any part of the chain fails.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import rclpy
from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame


@dataclass
class DemoResult:
    frames_sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    detections: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and len(self.latencies_ms) == self.frames_sent > 0


def node_command(weights: str, namespace: str) -> list[str]:
    """The node's command line, exactly as `ros2 run revperception perception_node` would start it."""
    return [
        sys.executable, "-m", "revperception.ros.perception_node", "--ros-args",
        "-p", f"weights:={weights}", "-p", "image_qos:=reliable",
        "-r", f"__ns:={namespace}",
    ]


def run_demo(weights: str = "yolov5n.yaml", frames: int = 20, startup_timeout_s: float = 120.0) -> DemoResult:
    result = DemoResult()
    namespace = f"/revperception_demo_{os.getpid()}"
    proc = subprocess.Popen(node_command(weights, namespace))
    rclpy.init()
    node = Node("demo_camera", namespace=namespace)
    replies: dict[tuple[int, int], tuple[float, Detection2DArray]] = {}

    def on_detections(msg: Detection2DArray) -> None:
        replies[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.perf_counter(), msg)

    publisher = node.create_publisher(Image, "image", qos.IMAGE_RELIABLE)
    node.create_subscription(Detection2DArray, "detections", on_detections, qos.DETECTIONS)
    try:
        print(f"demo: starting the perception node ({weights}) and waiting for it to subscribe ...")
        if not spin_until(node, lambda: publisher.get_subscription_count() > 0 or proc.poll() is not None,
                          startup_timeout_s) or proc.poll() is not None:
            result.failures.append(f"the perception node did not come up (exit code {proc.poll()})")
            return result
        for index in range(frames):
            stamp = Time(sec=1_000 + index, nanosec=0)
            msg = bgr_to_image(road_frame(index), Header(stamp=stamp, frame_id="camera"))
            sent = time.perf_counter()
            publisher.publish(msg)
            result.frames_sent += 1
            key = (stamp.sec, stamp.nanosec)
            if not spin_until(node, lambda key=key: key in replies, 30.0):
                result.failures.append(f"no detections for frame {index} within 30 s")
                break
            received, reply = replies[key]
            result.latencies_ms.append((received - sent) * 1e3)
            result.detections += len(reply.detections)
        return result
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.send_signal(signal.SIGINT)  # as `ros2 launch` stops its nodes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            result.failures.append("the perception node did not exit within 60 s of SIGINT")
            proc.kill()


def print_summary(result: DemoResult) -> None:
    print(f"demo: frames sent {result.frames_sent}, answered {len(result.latencies_ms)}, "
          f"detections {result.detections}")
    if result.latencies_ms:
        lat = sorted(result.latencies_ms)
        print(f"demo: frame -> detections over DDS: median {statistics.median(lat):.1f} ms, "
              f"worst {lat[-1]:.1f} ms (first frame includes warm-up)")
    for failure in result.failures:
        print(f"demo: FAILED: {failure}", file=sys.stderr)
