"""The perception node: camera frames in, vision_msgs detections out.

Start it as `ros2 run` would: `perception_node --ros-args -p weights:=yolov5n.yaml -r image:=/camera/image_raw`.
"""

from __future__ import annotations

import time

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from revperception.models import Detector, load_model
from revperception.ros import qos
from revperception.ros.conversions import ImageError, image_to_bgr, to_detection2d_array
from revperception.ros.spin import spin_until_signalled


class PerceptionNode(Node):
    """Runs the detector on every received frame and publishes its detections with the frame's header."""

    def __init__(self, **kwargs) -> None:
        super().__init__("revperception", **kwargs)
        weights = self._param("weights", "yolov5n.yaml", "model YAML or Ultralytics .pt checkpoint")
        imgsz = self._param("imgsz", 640, "inference size (longest side, pixels)")
        conf = self._param("conf", 0.25, "confidence threshold")
        iou = self._param("iou", 0.45, "NMS IoU threshold")
        max_det = self._param("max_det", 300, "maximum detections per frame")
        device = self._param("device", "cpu", "torch device")
        image_qos = self._param("image_qos", "sensor_data", "image subscription QoS: sensor_data or reliable")

        loaded = load_model(weights)
        self.detector = Detector(
            loaded.model, loaded.names, stride=loaded.stride, imgsz=imgsz, conf=conf, iou=iou,
            max_det=max_det, device=device,
        )
        self.frames = 0
        self.bad_frames = 0
        self.publisher = self.create_publisher(Detection2DArray, "detections", qos.DETECTIONS)
        self.subscription = self.create_subscription(Image, "image", self._on_image, qos.image_qos(image_qos))
        self.get_logger().info(f"ready: {weights} ({len(loaded.names)} classes) on {device}, imgsz {imgsz}")

    def _param(self, name: str, default, description: str):
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    def _on_image(self, msg: Image) -> None:
        try:
            frame = image_to_bgr(msg)
        except ImageError as err:
            self.bad_frames += 1
            self.get_logger().warning(f"skipped a frame: {err}", throttle_duration_sec=5.0)
            return
        start = time.perf_counter()
        detections = self.detector.predict(frame)
        self.frames += 1
        self.publisher.publish(to_detection2d_array(detections, msg.header))
        self.get_logger().debug(f"frame {self.frames}: {len(detections)} detections in "
                                f"{(time.perf_counter() - start) * 1e3:.1f} ms")


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = PerceptionNode()
    except Exception as err:  # a bad model must exit non-zero with a readable line, not a traceback wall
        rclpy.logging.get_logger("revperception").fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        raise SystemExit(1) from err
    try:
        spin_until_signalled(node)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
