"""The reference anomaly monitor: std_msgs/Bool on `anomaly` for the perception node, as a steady heartbeat.

`ros2 run revperception anomaly_monitor --ros-args --params-file config/anomaly_monitor.yaml -r image:=/camera/image`

Wiring only: parameters -> AnomalyMonitor (`revperception.anomaly`), frames -> `measure`, a timer ->
`anomaly`. The flag is published at `rate_hz` whether or not it changed, so the perception node's
`anomaly_timeout_s` can tell a silent monitor from a calm one. Users may replace this node with their own
detector: the contract is only that topic, its QoS (`revperception.ros.qos.ANOMALY`) and a steady rate.
"""

from __future__ import annotations

import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header
from vision_msgs.msg import Detection2DArray

from revperception.anomaly import AnomalyMonitor, Thresholds, measure
from revperception.ros import qos
from revperception.ros.conversions import ImageError, compressed_to_bgr, image_to_bgr
from revperception.ros.node_base import NodeBase
from revperception.ros.parameters import describe
from revperception.ros.spin import run_node

NAME = "anomaly_monitor"
THRESHOLDS = ("min_contrast", "min_brightness", "min_sharpness")
HOLDS = ("raise_after_s", "clear_after_s")

# name -> (default, descriptor). `config/anomaly_monitor.yaml` mirrors this table (a test keeps them in step).
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "min_contrast": (Thresholds.min_contrast, describe("lowest RMS contrast (std / mean of grey); fog and haze "
                                                       "fall below", low=0.0, high=10.0)),
    "min_brightness": (Thresholds.min_brightness, describe("lowest mean grey level, 0..1; darkness falls below",
                                                           low=0.0, high=1.0)),
    "min_sharpness": (Thresholds.min_sharpness, describe("lowest Laplacian variance / grey variance at 160 px wide; "
                                                         "blur falls below", low=0.0, high=100.0)),
    "raise_after_s": (0.3, describe("seconds of degraded frames before the anomaly is raised", low=0.0,
                                    high=3600.0)),
    "clear_after_s": (1.0, describe("seconds of clear frames (or resumed detections) before it clears", low=0.0,
                                    high=3600.0)),
    "stall_timeout_s": (2.0, describe("images arriving but no detections for this long is a stall", low=0.01,
                                      high=3600.0)),
    "rate_hz": (10.0, describe("anomaly heartbeat rate", read_only=True, low=0.1, high=1000.0)),
    "image_qos": ("sensor_data", describe("image subscription QoS: sensor_data or reliable", read_only=True)),
    "compressed": (False, describe("subscribe to <image>/compressed (JPEG/PNG) instead of raw image",
                                   read_only=True)),
    "every_nth": (1, describe("measure every Nth frame, to bound CPU", low=1, high=1000, integer=True)),
}


class AnomalyMonitorNode(NodeBase, Node):
    """Frames and detections in, a steady `anomaly` heartbeat and `~/status` out; see the module docstring."""

    def __init__(self, node_name: str = NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_table(PARAMETERS)
        self.monitor = AnomalyMonitor(Thresholds(**{n: self.param(n) for n in THRESHOLDS}),
                                      **{n: self.param(n) for n in (*HOLDS, "stall_timeout_s")})
        self.images = self.bad_images = self.detections = 0
        self._anomaly = False
        image_qos = qos.image_qos(self.param("image_qos"))
        kind, topic = self.image_subscription()
        images = self.create_subscription(kind, topic, self._on_frame, image_qos)
        self.create_subscription(Detection2DArray, "detections", self._on_detections, qos.DETECTIONS)
        self._publisher = self.create_publisher(Bool, "anomaly", qos.ANOMALY)
        self._status = self.create_publisher(DiagnosticArray, "~/status", qos.DETECTIONS)
        self.create_timer(1.0 / self.param("rate_hz"), self._on_heartbeat)
        self.create_timer(1.0, self._publish_status)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.get_logger().info(f"watching {images.topic_name} -> {self._publisher.topic_name} at "
                               f"{self.param('rate_hz')} Hz")

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Thresholds, holds and the stall timeout change at run time (rclpy has checked the ranges)."""
        self.monitor.thresholds = Thresholds(**{n: self.param(n) for n in THRESHOLDS})
        self.monitor.set_hold(**{n: self.param(n) for n in HOLDS})
        self.monitor.stall_timeout_s = self.param("stall_timeout_s")

    def _on_frame(self, msg: Image | CompressedImage) -> None:
        """Measure every Nth frame; a malformed one is skipped and counted, never fatal."""
        self.images += 1
        if (self.images - 1) % self.param("every_nth"):
            return
        try:
            frame = compressed_to_bgr(msg) if isinstance(msg, CompressedImage) else image_to_bgr(msg)
        except ImageError as err:
            self.bad_images += 1
            self.get_logger().warning(f"skipped a frame: {err}", throttle_duration_sec=5.0)
            return
        self.monitor.on_image(measure(frame), time.monotonic())

    def _on_detections(self, msg: Detection2DArray) -> None:
        self.detections += 1
        self.monitor.on_detections(time.monotonic())

    def _on_heartbeat(self) -> None:
        anomaly, reasons = self.monitor.state(time.monotonic())
        self._publisher.publish(Bool(data=anomaly))
        if anomaly != self._anomaly:
            self._anomaly = anomaly
            # the flag is on the topic every tick; the log must not flood when the input flaps
            if anomaly:
                self.get_logger().warning(f"anomaly: {'; '.join(reasons)}", throttle_duration_sec=1.0)
            else:
                self.get_logger().info("anomaly cleared", throttle_duration_sec=1.0)
            self._publish_status()

    def _publish_status(self) -> None:
        now = time.monotonic()
        monitor = self.monitor
        anomaly, reasons = monitor.state(now)
        quality, image_age, detections_age = monitor.quality, monitor.image_age(now), monitor.detections_age(now)
        receiving = image_age is not None and image_age <= monitor.stall_timeout_s
        if anomaly:
            level, message = DiagnosticStatus.WARN, "; ".join(reasons)
        elif not receiving:
            level, message = DiagnosticStatus.WARN, "no images" if image_age is None else "images stopped"
        else:
            level, message = DiagnosticStatus.OK, "clear"
        values = {
            "anomaly": anomaly, "reasons": "; ".join(reasons), "frame_failures": "; ".join(monitor.failures),
            **{k: "n/a" if quality is None else f"{getattr(quality, k):.4f}"
               for k in ("contrast", "brightness", "sharpness")},
            "images": self.images, "bad_images": self.bad_images, "detections": self.detections,
            "image_age_s": "never" if image_age is None else f"{image_age:.2f}",
            "detections_age_s": "never" if detections_age is None else f"{detections_age:.2f}",
        }
        self._status.publish(self.status_array(Header(stamp=self.get_clock().now().to_msg()), "anomaly", values, level,
                                               message))


def main(args: list[str] | None = None) -> None:
    run_node(AnomalyMonitorNode, NAME, args)


if __name__ == "__main__":
    main()
