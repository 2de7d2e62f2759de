"""The end-to-end demo: camera frames and an anomaly flag over DDS into the perception node process.

Everything is real: the node runs as its own process, started as `ros2 run` would start it, frames,
the anomaly flag and detections cross Fast DDS. The anomaly fires for the middle third of the frames,
so the run shows pruned -> full -> (after the hold) pruned. Exits non-zero when any part fails.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Header, String
from vision_msgs.msg import Detection2DArray

from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.perception_node import ANOMALY_QOS, MODE_QOS
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame

DEMO_CHECKPOINT = Path("demo-out") / "yolov5n.rvp.safetensors"


@dataclass
class FrameRecord:
    index: int
    anomaly: bool
    level: str
    latency_ms: float  # frame published -> detections received, over DDS
    detections: int


@dataclass
class DemoResult:
    frames_sent: int = 0
    records: list[FrameRecord] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    switch_ms: float | None = None  # anomaly published -> ~/mode says full
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and len(self.records) == self.frames_sent > 0


def demo_checkpoint(path: Path = DEMO_CHECKPOINT) -> Path:
    """A YOLOv5n checkpoint pruned without data (fresh weights: the node's mechanics, not its accuracy)."""
    if not path.exists():
        from revperception.checkpoint import save_reversible
        from revperception.models import load_model
        from revperception.pruning.prune import prune_to_levels

        print(f"demo: writing {path} (YOLOv5n from its YAML, 36 % of filters pruned, no fine-tuning)")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reversible(path, prune_to_levels(load_model("yolov5n.yaml"), [0.36], imgsz=320))
    return path


def node_command(checkpoint: Path, namespace: str) -> list[str]:
    """The node's command line, exactly as `ros2 run revperception perception_node` would start it."""
    return [
        sys.executable, "-m", "revperception.ros.perception_node", "--ros-args",
        "-p", f"checkpoint:={checkpoint}", "-p", "image_qos:=reliable", "-p", "anomaly_clear_hold_s:=0.5",
        "-r", f"__ns:={namespace}",
    ]


def run_demo(checkpoint: Path | None = None, frames: int = 30, startup_timeout_s: float = 120.0) -> DemoResult:
    result = DemoResult()
    checkpoint = checkpoint or demo_checkpoint()
    namespace = f"/revperception_demo_{os.getpid()}"
    proc = subprocess.Popen(node_command(checkpoint, namespace))
    rclpy.init()
    node = Node("demo_camera", namespace=namespace)
    replies: dict[int, tuple[float, Detection2DArray]] = {}
    levels: dict[int, str] = {}
    node.create_subscription(Detection2DArray, "detections",
                             lambda m: replies.setdefault(m.header.stamp.sec, (time.perf_counter(), m)), qos.DETECTIONS)
    node.create_subscription(DiagnosticArray, "revperception/frame_info", lambda m: levels.setdefault(
        m.header.stamp.sec, next(kv.value for kv in m.status[0].values if kv.key == "level")), qos.DETECTIONS)
    node.create_subscription(String, "revperception/mode", lambda m: result.modes.append(m.data), MODE_QOS)
    camera = node.create_publisher(Image, "image", qos.IMAGE_RELIABLE)
    anomaly = node.create_publisher(Bool, "anomaly", ANOMALY_QOS)
    try:
        print(f"demo: starting the perception node ({checkpoint}) and waiting for it ...")
        if not spin_until(node, lambda: (camera.get_subscription_count() > 0 and result.modes)
                          or proc.poll() is not None, startup_timeout_s) or proc.poll() is not None:
            result.failures.append(f"the perception node did not come up (exit code {proc.poll()})")
            return result
        flag = False
        for index in range(frames):
            wanted = frames // 3 <= index < 2 * frames // 3
            if wanted != flag:
                flag = wanted
                sent = time.perf_counter()
                anomaly.publish(Bool(data=flag))
                if flag and spin_until(node, lambda: result.modes[-1] == "full", 10.0):
                    result.switch_ms = (time.perf_counter() - sent) * 1e3
            stamp = 1_000 + index
            sent = time.perf_counter()
            camera.publish(bgr_to_image(road_frame(index), Header(stamp=Time(sec=stamp), frame_id="camera")))
            result.frames_sent += 1
            if not spin_until(node, lambda s=stamp: s in replies and s in levels, 30.0):
                result.failures.append(f"no detections for frame {index} within 30 s")
                break
            received, reply = replies[stamp]
            result.records.append(FrameRecord(index, flag, levels[stamp], (received - sent) * 1e3,
                                              len(reply.detections)))
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
    for r in result.records:
        print(f"demo: frame {r.index:>3}  anomaly {'ON ' if r.anomaly else 'off'}  level {r.level:<7} "
              f"{r.latency_ms:7.1f} ms  {r.detections} detections")
    print(f"demo: frames sent {result.frames_sent}, answered {len(result.records)}; modes {' -> '.join(result.modes)}")
    if result.switch_ms is not None:
        print(f"demo: anomaly published -> ~/mode full: {result.switch_ms:.1f} ms")
    for level in dict.fromkeys(r.level for r in result.records):
        latencies = [r.latency_ms for r in result.records[1:] if r.level == level]
        if latencies:
            print(f"demo: {level} frames: median {statistics.median(latencies):.1f} ms frame -> detections over DDS")
    for failure in result.failures:
        print(f"demo: FAILED: {failure}", file=sys.stderr)
