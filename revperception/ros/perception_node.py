"""The perception node: a managed node that runs the reversible detector on a camera stream.

`ros2 run revperception perception_node --ros-args --params-file config/perception.yaml -r image:=/camera/image_raw`

Wiring only: parameters -> LevelPolicy and ReversibleDetector; callbacks -> conversions. The one seam
where the level changes is `_apply`. Inference runs on its own worker thread, which always takes the
latest frame (older unprocessed frames are dropped and counted), so anomaly messages, the force-full
service and the policy timer never wait behind an inference.

The worker pulls frames itself (`LatestFrame`): the executor never wakes for a camera frame, and only the
newest waiting frame is deserialized and decoded; when the camera outpaces the model, a dropped frame costs
one copy, not a Python message, an image and an executor turn.

Every torch call (the checkpoint load too) runs on that one thread: torch's OpenMP gives each calling
thread its own team, and two teams on the same cores slow every frame.

The executor is single-threaded on purpose: rclpy's MultiThreadedExecutor (Jazzy) re-scans its wait set
while holding the interpreter lock whenever a callback is in flight, starving the inference thread.
docs/node.md gives the measurements behind both choices.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2DArray

from revperception.checkpoint import read_metadata
from revperception.detector import ReversibleDetector
from revperception.models.annotate import annotate
from revperception.policy import Decision, LevelPolicy
from revperception.pruning import FULL
from revperception.ros import qos
from revperception.ros.conversions import (
    ImageError,
    bgr_to_image,
    compressed_to_bgr,
    image_to_bgr,
    to_detection2d_array,
)
from revperception.ros.latest_frame import LatestFrame
from revperception.ros.node_base import NodeBase
from revperception.ros.parameters import describe
from revperception.ros.spin import run_node

NAME = "revperception"


# name -> (default, descriptor). `config/perception.yaml` mirrors this table (a test keeps them in step).
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "checkpoint": ("", describe("reversible checkpoint (*.rvp.safetensors) from `revperception prune`",
                                 read_only=True)),
    "device": ("cpu", describe("device: cpu, cuda, cuda:1 (torch); cpu, gpu (openvino)", read_only=True)),
    "backend": ("torch", describe("torch (one set of shared weights) or openvino (each level compiled once, at "
                                  "configure)", read_only=True)),
    "precision": ("fp32", describe("fp32, bf16, fp16 (CUDA, or OpenVINO where the device runs it) or auto (the "
                                   "fastest the device runs natively)", read_only=True)),
    "imgsz": (0, describe("inference size (longest side, pixels) for every level; 0 = each level's own, from the "
                           "checkpoint", read_only=True, low=0, high=4096, integer=True)),
    "conf": (0.25, describe("confidence threshold", low=0.0, high=1.0)),
    "iou": (0.45, describe("NMS IoU threshold", low=0.0, high=1.0)),
    "max_det": (300, describe("most detections per frame", low=1, high=10000, integer=True)),
    "classes": (Parameter.Type.INTEGER_ARRAY, describe("class ids to keep (unset or empty = all)")),
    "start_level": ("pruned", describe("level when calm: a checkpoint level name", read_only=True)),
    "anomaly_clear_hold_s": (2.0, describe("seconds the anomaly must stay false before the calm level returns",
                                            low=0.0, high=3600.0)),
    "anomaly_timeout_s": (0.5, describe("no anomaly message for this long means full (fail-safe: the reference "
                                         "monitor beats at 10 Hz; 0 = off, for a detector that only speaks on "
                                         "change)", low=0.0, high=3600.0)),
    "image_qos": ("sensor_data", describe("image subscription QoS: sensor_data or reliable", read_only=True)),
    "compressed": (False, describe("subscribe to <image>/compressed (JPEG/PNG) instead of raw image",
                                    read_only=True)),
    "publish_debug_image": (False, describe("publish annotated frames on ~/debug_image")),
    "autostart": (True, describe("configure and activate at start (no lifecycle manager needed)",
                                  read_only=True)),
}

class StartError(RuntimeError):
    """The node could not configure or activate; the message says why."""


@dataclass
class Stats:
    """Counters for /diagnostics and ~/frame_info."""

    frames: int = 0
    bad_frames: int = 0
    errors: int = 0
    anomaly_messages: int = 0
    switches: int = 0
    last_switch: str = "never"
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50))
    window_frames: int = 0  # frames since the last /diagnostics message


class PerceptionNode(NodeBase, LifecycleNode):
    """Camera frames in, detections out, at the level the LevelPolicy wants; see the module docstring."""

    def __init__(self, node_name: str = NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_table(PARAMETERS)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.detector: ReversibleDetector | None = None
        self.policy: LevelPolicy | None = None
        self.weights_sha256 = ""
        self.stats = Stats()
        self._lock = threading.Lock()  # policy and level seam, shared with the worker; never held during inference
        self._decision = Decision("", "start")
        self._frames: LatestFrame | None = None  # the latest frame for the inference worker, while active
        self._policy_timer: Timer | None = None  # wakes the policy when a hold or the silence timeout ends
        self._window_start = time.monotonic()
        self._teardown: list[Callable[[], Any]] = []  # undoes on_activate
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")  # see the module docstring
        self._failure = ""
        if self.param("autostart"):
            self.start()

    def start(self) -> None:
        """Configure and activate, as a lifecycle manager would; raises StartError with the reason."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise StartError(self._failure)
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise StartError(self._failure)

    # -- lifecycle ------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and verify the checkpoint; never fall back to other weights."""
        checkpoint = self.param("checkpoint")
        try:
            if not checkpoint:
                raise ValueError("parameter 'checkpoint' is not set (a *.rvp.safetensors from `revperception prune`)")
            self.detector = self._torch.submit(self._load, checkpoint).result()
            self.weights_sha256 = read_metadata(checkpoint)["weights_sha256"]
        except Exception as err:  # any reason at all: log it, report failure, load nothing else
            self._failure = f"cannot load checkpoint {checkpoint!r}: {err}"
            self.get_logger().fatal(self._failure)
            self.detector = None
            return TransitionCallbackReturn.FAILURE
        self.policy = LevelPolicy(calm_level=self.param("start_level"), alert_level=FULL,
                                  clear_hold_s=self.param("anomaly_clear_hold_s"),
                                  timeout_s=self.param("anomaly_timeout_s"), clock=self._policy_clock())
        # Lifecycle publishers: nothing goes out while the node is inactive.
        self._detections = self.create_lifecycle_publisher(Detection2DArray, "detections", qos.DETECTIONS)
        self._mode = self.create_lifecycle_publisher(String, "~/mode", qos.MODE)
        self._frame_info = self.create_lifecycle_publisher(DiagnosticArray, "~/frame_info", qos.DETECTIONS)
        self._diagnostics = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", qos.DETECTIONS)
        self._debug = self.create_lifecycle_publisher(Image, "~/debug_image", qos.IMAGE_SENSOR_DATA)
        self.get_logger().info(
            f"configured: {Path(checkpoint).name} (sha256 {self.weights_sha256[:12]}), levels "
            f"{', '.join(self.detector.levels)} at {', '.join(map(str, self.detector.sizes))} px, "
            f"on {self.param('device')} via {self.detector.backend} at {self.detector.precision}")
        return super().on_configure(state)

    def _load(self, checkpoint: str) -> ReversibleDetector:
        """The detector, warmed up at every level so that neither the first frame nor the first switch is late."""
        detector = ReversibleDetector.from_checkpoint(
            checkpoint, device=self.param("device"), imgsz=self.param("imgsz") or None, conf=self.param("conf"),
            iou=self.param("iou"), max_det=self.param("max_det"), classes=self.param("classes") or None,
            start_level=self.param("start_level"), backend=self.param("backend"), precision=self.param("precision"))
        detector.warm_up()
        return detector

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers (the base class), then take frames: the first ~/mode is published at once."""
        try:
            image_qos = qos.image_qos(self.param("image_qos"))
        except ValueError as err:
            self._failure = str(err)
            self.get_logger().fatal(self._failure)
            return TransitionCallbackReturn.FAILURE
        if (enabled := super().on_activate(state)) != TransitionCallbackReturn.SUCCESS:
            return enabled
        kind, topic = self.image_subscription()
        frames = LatestFrame(self, kind, topic, image_qos)
        anomaly = self.create_subscription(Bool, "anomaly", self._on_anomaly, qos.ANOMALY)
        force = self.create_service(SetBool, "~/force_full", self._on_force_full)
        self._policy_timer = self.create_timer(1.0, self._on_policy_timer)  # re-armed by `_rearm`
        timers = [self._policy_timer, self.create_timer(1.0, self._publish_diagnostics)]
        worker = self._torch.submit(self._work, frames, kind)
        self._frames = frames
        self._teardown = [frames.close, worker.result, frames.destroy, partial(self.destroy_subscription, anomaly),
                          partial(self.destroy_service, force), *(partial(self.destroy_timer, t) for t in timers)]
        with self._lock:
            self._apply(self.policy.decide(), publish_always=True)
            self._rearm()
        self.get_logger().info(f"active: {frames.topic_name} -> {self._detections.topic_name}, level "
                               f"{self.detector.level}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        done = super().on_cleanup(state)
        for publisher in (self._detections, self._mode, self._frame_info, self._diagnostics, self._debug):
            self.destroy_lifecycle_publisher(publisher)
        self.detector = self.policy = None
        return done

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_shutdown(state)

    def destroy_node(self) -> None:
        self._stop_processing()
        self._torch.shutdown()
        super().destroy_node()

    def _stop_processing(self) -> None:
        teardown, self._teardown, self._policy_timer = self._teardown, [], None
        for undo in teardown:
            undo()

    def _policy_clock(self) -> Any:
        """Steady time, or the ROS clock under use_sim_time so holds follow a replayed bag's time."""
        if self.param("use_sim_time"):
            return lambda: self.get_clock().now().nanoseconds * 1e-9
        return time.monotonic

    # -- parameters -----------------------------------------------------------------------------------

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name == "classes" and p.value is not None and any(c < 0 for c in p.value):
                return SetParametersResult(successful=False, reason="classes are non-negative class ids")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Run-time changes take effect from the next frame (detector) or at once (policy)."""
        with self._lock:
            for p in params:
                if self.detector is not None and p.name in ("conf", "iou", "max_det"):
                    setattr(self.detector.detector, p.name, p.value)
                elif self.detector is not None and p.name == "classes":
                    self.detector.detector.classes = list(p.value) or None
                elif self.policy is not None and p.name == "anomaly_clear_hold_s":
                    self.policy.clear_hold_s = p.value
                elif self.policy is not None and p.name == "anomaly_timeout_s":
                    self.policy.timeout_s = p.value
            if self._policy_timer is not None:
                self._rearm()

    # -- the level seam -------------------------------------------------------------------------------

    def _apply(self, decision: Decision, *, publish_always: bool = False) -> None:
        """Make the detector's level the policy's; call with `_lock` held."""
        changed = decision.level != self.detector.level
        if changed:
            previous = self.detector.level
            self.detector.set_level(decision.level)  # one assignment; the next inference runs at it
            self.stats.switches += 1
            self.stats.last_switch = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            # every switch is on ~/mode and counted in /diagnostics; the log must not flood with a flapping input
            self.get_logger().info(f"level {previous} -> {decision.level} ({decision.reason})",
                                   throttle_duration_sec=1.0)
        if changed or publish_always:
            self._mode.publish(String(data=decision.level))
        self._decision = decision

    def _rearm(self) -> None:
        """Wake the policy timer when the decision may next change on its own (a hold ends, the silence timeout),
        not on a fixed poll: a 50 Hz poll cost 3-4 % of inference throughput (`revperception bench-node`).
        Call on the executor with `_lock` held; frames need no wake-up (each one decides before it runs)."""
        wait = self.policy.next_change()
        if wait is None:
            self._policy_timer.cancel()
        else:
            self._policy_timer.timer_period_ns = int(wait * 1e9) + 1_000_000  # just past the deadline
            self._policy_timer.reset()

    def _on_anomaly(self, msg: Bool) -> None:
        with self._lock:
            self.stats.anomaly_messages += 1
            self._apply(self.policy.on_anomaly(msg.data))
            self._rearm()

    def _on_force_full(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._lock:
            self._apply(self.policy.force_full(request.data))
            self._rearm()
            response.success = True
            response.message = f"level {self.detector.level} ({self._decision.reason})"
        return response

    def _on_policy_timer(self) -> None:
        with self._lock:
            self._apply(self.policy.decide())
            self._rearm()

    # -- frames ---------------------------------------------------------------------------------------

    def _decode(self, raw: bytes, kind: type) -> tuple[Header, np.ndarray] | None:
        """The frame in a serialized message, or None (counted, with a throttled warning) for bad input."""
        try:
            msg = deserialize_message(raw, kind)
            return msg.header, compressed_to_bgr(msg) if kind is CompressedImage else image_to_bgr(msg)
        except ImageError as err:
            self.stats.bad_frames += 1
            self.get_logger().warning(f"skipped a frame: {err}", throttle_duration_sec=5.0)
            return None

    def _work(self, frames: LatestFrame, kind: type) -> None:
        while (raw := frames.take()) is not None:
            try:
                if (frame := self._decode(raw, kind)) is not None:
                    self._process(*frame, frames.dropped)
            except Exception as err:  # the node outlives any one frame
                self.stats.errors += 1
                self.get_logger().error(f"frame failed: {err!r}", throttle_duration_sec=5.0)

    def _process(self, header: Header, frame: np.ndarray, dropped: int) -> None:
        with self._lock:  # the hold may have expired, or the detector fallen silent, since the last tick
            self._apply(self.policy.decide())
        start = time.perf_counter()
        detections = self.detector.predict(frame)
        latency_ms = (time.perf_counter() - start) * 1e3
        self._detections.publish(to_detection2d_array(detections, header))
        stats = self.stats
        stats.frames += 1
        stats.window_frames += 1
        stats.latencies_ms.append(latency_ms)
        self._frame_info.publish(self.status_array(header, "frame", {
            "level": detections.level, "latency_ms": f"{latency_ms:.2f}", "detections": len(detections),
            "frame": stats.frames, "dropped_frames": dropped, "bad_frames": stats.bad_frames}))
        if self.param("publish_debug_image"):
            banner = f"{detections.level} {latency_ms:.0f} ms"
            self._debug.publish(bgr_to_image(annotate(frame, detections, banner=banner), header))

    # -- diagnostics ----------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        stats, policy = self.stats, self.policy
        fps = stats.window_frames / max(now - self._window_start, 1e-6)
        stats.window_frames, self._window_start = 0, now
        latencies = sorted(stats.latencies_ms)
        with self._lock:
            decision, age = self._decision, policy.message_age()
            anomaly, forced = policy.anomaly, policy.forced
        warn = decision.reason == "timeout"
        header = Header(stamp=self.get_clock().now().to_msg())
        self._diagnostics.publish(self.status_array(header, "perception", {
            "level": decision.level, "reason": decision.reason, "fps": f"{fps:.2f}",
            "latency_ms": f"{latencies[len(latencies) // 2]:.2f}" if latencies else "n/a",
            "frames": stats.frames, "dropped_frames": self._frames.dropped if self._frames else 0,
            "bad_frames": stats.bad_frames, "errors": stats.errors, "switches": stats.switches,
            "anomaly_messages": stats.anomaly_messages,
            "last_switch": stats.last_switch, "anomaly": anomaly, "forced_full": forced,
            "anomaly_age_s": "never" if age is None else f"{age:.2f}", "weights_sha256": self.weights_sha256,
            "backend": self.detector.backend, "precision": self.detector.precision,
        }, DiagnosticStatus.WARN if warn else DiagnosticStatus.OK,
            "anomaly detector silent: holding full" if warn else f"running {decision.level}"))


def main(args: list[str] | None = None) -> None:
    run_node(PerceptionNode, NAME, args)


if __name__ == "__main__":
    main()
