"""`revperception bench-node`: the node's reversion latency and throughput, end to end over DDS.

A camera streams frames into the node process (started as `ros2 run` would start it). Each trial
publishes `anomaly: true` and times how long until detections produced by the full level arrive; that
includes finishing the pruned frame already in flight, as it would on a vehicle. The alternative the
paper compares with (reload the full model from disk on the anomaly, then infer) and one bare full
inference are measured in this process, with the node stopped, on the same frame.

Throughput alternates slices of the node (camera on) with slices of the bare model in this process
(camera paused, the node idle), so the machine's own drift, several percent within a minute on a shared
2-core machine, weighs on both sides alike.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Header, String
from vision_msgs.msg import Detection2DArray

from revperception.detector import ReversibleDetector
from revperception.measure import median_ms
from revperception.pruning import FULL, PRUNED
from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame


class _Probe:
    """Camera, anomaly source and listener around one node process."""

    def __init__(self, namespace: str) -> None:
        self.node = Node("bench_probe", namespace=namespace)
        self.arrivals: dict[int, float] = {}  # detections stamp -> receive time
        self.levels: dict[int, str] = {}  # frame_info stamp -> level
        self.answered: dict[int, float] = {}  # frame_info stamp -> receive time
        self.latencies_ms: dict[int, float] = {}  # frame_info stamp -> the node's own inference time
        self.modes: list[str] = []
        self.dropped = 0  # frames the node dropped for newer ones, as it last reported
        self.node.create_subscription(Detection2DArray, "detections", self._on_detections, qos.DETECTIONS)
        self.node.create_subscription(DiagnosticArray, "revperception/frame_info", self._on_info, qos.DETECTIONS)
        self.node.create_subscription(String, "revperception/mode", lambda m: self.modes.append(m.data), qos.MODE)
        self.camera = self.node.create_publisher(Image, "image", qos.IMAGE_RELIABLE)
        self.anomaly = self.node.create_publisher(Bool, "anomaly", qos.ANOMALY)
        self._stop = threading.Event()
        self._streaming = threading.Event()
        self._streaming.set()
        self.stamp = 0

    def _on_detections(self, msg: Detection2DArray) -> None:
        self.arrivals[msg.header.stamp.sec] = time.perf_counter()

    def _on_info(self, msg: DiagnosticArray) -> None:
        self.answered[msg.header.stamp.sec] = time.perf_counter()
        values = {kv.key: kv.value for kv in msg.status[0].values}
        self.levels[msg.header.stamp.sec] = values["level"]
        self.latencies_ms[msg.header.stamp.sec] = float(values["latency_ms"])
        self.dropped = int(values["dropped_frames"])

    def stream(self, rate_hz: float) -> threading.Thread:
        """Publish frames at `rate_hz` from a thread until `stop()`, while not paused; stamps count up from 1."""
        frame = bgr_to_image(road_frame(0))

        def run() -> None:
            period, next_at = 1.0 / rate_hz, time.perf_counter()
            while not self._stop.is_set():
                if not self._streaming.is_set():
                    self._streaming.wait()
                    next_at = time.perf_counter()
                    continue
                self.stamp += 1
                frame.header = Header(stamp=Time(sec=self.stamp), frame_id="camera")
                self.camera.publish(frame)
                next_at += period
                self._stop.wait(max(0.0, next_at - time.perf_counter()))  # the camera's frame clock

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def pause(self, paused: bool) -> None:
        if paused:
            self._streaming.clear()
        else:
            self._streaming.set()

    def stop(self) -> None:
        self._stop.set()
        self._streaming.set()

    def wait(self, done: Any, timeout_s: float = 30.0) -> bool:
        return spin_until(self.node, done, timeout_s)


def _bare_latencies(detector: ReversibleDetector, checkpoint: Path, image: np.ndarray, runs: int) -> dict[str, float]:
    """Median inference of each level on the bare model, and disk reload + one full inference."""
    out: dict[str, float] = {}
    for level in (PRUNED, FULL):
        detector.set_level(level)
        detector.predict(image)
        out[f"{level}_ms"] = median_ms(lambda: detector.predict(image), runs)
    reloads = []
    for _ in range(max(3, runs // 4)):
        start = time.perf_counter()
        ReversibleDetector.from_checkpoint(checkpoint, imgsz=detector.detector.imgsz, start_level=FULL,
                                           backend=detector.backend, precision=detector.precision).predict(image)
        reloads.append((time.perf_counter() - start) * 1e3)
    out["reload_median_ms"], out["reload_worst_ms"] = statistics.median(reloads), max(reloads)
    return out


def _bare_fps(detector: ReversibleDetector, image: np.ndarray, seconds: float) -> float:
    """Frames per second of back-to-back inference on the bare model, after one untimed frame."""
    detector.predict(image)
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        detector.predict(image)
        frames += 1
    return frames / (time.perf_counter() - start)


def _node_fps(probe: _Probe, seconds: float) -> tuple[float, list[float]]:
    """Frames per second the node finishes while the camera outpaces it, timed from its first result after the
    camera resumes over the next `seconds`; and the node's own inference times for those frames."""
    newest = max(probe.levels)
    probe.pause(False)
    if not probe.wait(lambda: max(probe.levels) > newest, 30):
        raise RuntimeError("the node stopped answering")
    first = max(probe.levels)
    start = probe.answered[first]
    if not probe.wait(lambda: time.perf_counter() - start >= seconds and max(probe.levels) > first, seconds + 30):
        raise RuntimeError("the node stopped answering")
    probe.pause(True)
    end = max(start + seconds, min(t for s, t in probe.answered.items() if s > first))  # at least one frame
    done = {s: t for s, t in probe.answered.items() if s > first and t <= end}
    last_sent = probe.stamp
    if not probe.wait(lambda: last_sent in probe.levels, 30):  # idle before the bare model runs
        raise RuntimeError("the node did not finish its last frame")
    return len(done) / (max(done.values()) - start), [probe.latencies_ms[s] for s in done]


def _throughput(probe: _Probe, detector: ReversibleDetector, seconds: float, rounds: int = 5) -> dict[str, Any]:
    """Node against bare model in `rounds` alternating slices of `seconds / rounds` each; see the module docstring."""
    image = road_frame(0)
    detector.set_level(PRUNED)
    stamp, dropped, start = probe.stamp, probe.dropped, time.perf_counter()
    node, bare, inside = [], [], []
    for _ in range(rounds):
        fps, latencies = _node_fps(probe, seconds / rounds)
        node.append(fps)
        inside += latencies
        bare.append(_bare_fps(detector, image, seconds / rounds))
    probe.pause(False)
    elapsed = time.perf_counter() - start
    return {"node_fps_pruned": statistics.mean(node), "bare_fps_pruned": statistics.mean(bare),
            "throughput_ratio": statistics.mean(node) / statistics.mean(bare),
            "throughput_rounds": [round(n / b, 3) for n, b in zip(node, bare, strict=True)],
            "node_pruned_ms": statistics.median(inside), "camera_fps_sent": (probe.stamp - stamp) / elapsed,
            "node_dropped": probe.dropped - dropped}


def _revert_once(probe: _Probe, phase_s: float) -> float:
    """Anomaly published mid-stream, `phase_s` after a frame's result -> first full-level detections received, ms.

    A frame's result arrives just as the node starts the next one, so publishing at once would always hit the
    start of a pruned frame (the worst case); a real anomaly detector is not in step with the node.
    """
    newest = max(probe.levels)
    if not probe.wait(lambda: max(probe.levels) > newest, 30):  # mid-stream: a pruned frame is in flight
        raise RuntimeError("the node stopped answering")
    due = time.perf_counter() + phase_s
    probe.wait(lambda: time.perf_counter() >= due, phase_s + 1)
    sent = time.perf_counter()
    probe.anomaly.publish(Bool(data=True))

    def first_full() -> int | None:
        fresh = [s for s, level in probe.levels.items() if level == FULL and probe.arrivals.get(s, 0) > sent]
        return min(fresh, default=None)

    if not probe.wait(lambda: first_full() is not None, 30):
        raise RuntimeError("no full-level detections after an anomaly")
    latency = (probe.arrivals[first_full()] - sent) * 1e3
    probe.anomaly.publish(Bool(data=False))
    if not probe.wait(lambda: probe.modes[-1] == PRUNED, 30):
        raise RuntimeError("the node did not return to pruned")
    return latency


def run_node_bench(checkpoint: Path, *, trials: int = 50, imgsz: int = 640, camera_hz: float | None = None,
                   throughput_s: float = 10.0, backend: str = "torch", precision: str = "fp32") -> dict[str, Any]:
    """Reversion latency (median, worst of `trials`) and node throughput against the bare model.

    The camera runs at 30 Hz, a common vehicle camera rate, or at 1.25x the bare model's pruned frame rate
    where that is faster (at most 60 Hz), so the node always has a fresh frame waiting. Throughput takes
    `throughput_s` of the node and as long of the bare model, in alternating slices.
    """
    qos.use_large_frame_transport()
    detector = ReversibleDetector.from_checkpoint(checkpoint, imgsz=imgsz, backend=backend,  # the bare model,
                                                  precision=precision)  # in this process
    bare = _bare_latencies(detector, checkpoint, road_frame(0), runs=20)
    camera_hz = camera_hz or min(60.0, max(30.0, 1.25 * 1e3 / bare["pruned_ms"]))
    namespace = f"/revperception_bench_{os.getpid()}"
    proc = subprocess.Popen([
        sys.executable, "-m", "revperception.ros.perception_node", "--ros-args", "-p", f"checkpoint:={checkpoint}",
        "-p", f"imgsz:={imgsz}", "-p", f"backend:={backend}", "-p", f"precision:={detector.precision}",
        "-p", "anomaly_clear_hold_s:=0.0", "-p", "anomaly_timeout_s:=0.0", "-p", "image_qos:=reliable",
        "-r", f"__ns:={namespace}"])
    rclpy.init()
    probe = _Probe(namespace)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "imgsz": imgsz, "trials": trials, "backend": backend,
                              "precision": detector.precision,
                              "camera_hz": camera_hz, "torch_threads": torch.get_num_threads(), **bare}
    try:
        if not probe.wait(lambda: probe.camera.get_subscription_count() > 0 and probe.modes, 120):
            raise RuntimeError(f"the node did not come up (exit code {proc.poll()})")
        probe.stream(camera_hz)
        if not probe.wait(lambda: len(probe.levels) >= 5, 60):
            raise RuntimeError("the node answered no frames")
        result.update(_throughput(probe, detector, throughput_s))
        phases = random.Random(0)  # the same anomaly times on every run: comparable figures
        latencies = [_revert_once(probe, phases.uniform(0, bare["pruned_ms"] / 1e3)) for _ in range(trials)]
        result["revert_median_ms"] = statistics.median(latencies)
        result["revert_worst_ms"] = max(latencies)
        result["revert_trials_ms"] = [round(ms, 1) for ms in latencies]
        result["revert_over_full_inference"] = result["revert_median_ms"] / bare["full_ms"]
        result["reload_over_revert"] = bare["reload_median_ms"] / result["revert_median_ms"]
    finally:
        probe.stop()
        probe.node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        proc.wait(timeout=60)
    return result


def format_node_bench(r: dict[str, Any]) -> str:
    return "\n".join([
        f"node bench: {r['checkpoint']} at imgsz {r['imgsz']}, {r['backend']} {r['precision']}, "
        f"camera {r['camera_hz']:.0f} Hz, "
        f"{r['torch_threads']} torch threads",
        f"  bare inference: pruned {r['pruned_ms']:.1f} ms, full {r['full_ms']:.1f} ms",
        f"  anomaly -> first full-level detections over DDS: median {r['revert_median_ms']:.1f} ms, "
        f"worst {r['revert_worst_ms']:.1f} ms of {r['trials']} ({r['revert_over_full_inference']:.2f}x one full "
        f"inference; target <= 1.6x)",
        f"  reload from disk + full inference instead: median {r['reload_median_ms']:.1f} ms, worst "
        f"{r['reload_worst_ms']:.1f} ms ({r['reload_over_revert']:.1f}x the reversion)",
        f"  throughput at pruned: node {r['node_fps_pruned']:.2f} fps, bare model {r['bare_fps_pruned']:.2f} fps "
        f"in alternating slices -> {r['throughput_ratio']:.2f} (target >= 0.9; slices "
        f"{', '.join(f'{x:.2f}' for x in r['throughput_rounds'])}); inference inside the node "
        f"{r['node_pruned_ms']:.1f} ms",
    ])
