"""The reference anomaly monitor over real DDS: in-process for the behaviour, as a process for start-up."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import cv2
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool
from vision_msgs.msg import Detection2DArray

from conftest import BIN, ROOT, NodeRig, stop_process
from revperception.ros import qos
from revperception.ros.anomaly_monitor import AnomalyMonitorNode
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import add_fog, road_frame

pytestmark = pytest.mark.ros

CLEAR = [bgr_to_image(road_frame(i)[::2, ::2]) for i in range(8)]  # 320x240
FOGGY = [bgr_to_image(add_fog(road_frame(i)[::2, ::2], 0.7)) for i in range(8)]
_namespaces = iter(range(1_000_000))


class Rig(NodeRig):
    """The monitor in its own executor (as main() runs it), and a probe node playing camera and detector."""

    def __init__(self, **params) -> None:
        params = {"image_qos": "reliable", "raise_after_s": 0.2, "clear_after_s": 0.5, "stall_timeout_s": 0.6,
                  "rate_hz": 20.0, **params}
        super().__init__(AnomalyMonitorNode(namespace=f"/mon{next(_namespaces)}",
                                            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
        self.flags: list[bool] = []
        self.status: list[dict[str, str]] = []
        compressed = params.get("compressed", False)
        self.images = self.probe.create_publisher(CompressedImage if compressed else Image,
                                                  "image/compressed" if compressed else "image", qos.IMAGE_RELIABLE)
        self.detections = self.probe.create_publisher(Detection2DArray, "detections", qos.DETECTIONS)
        self.probe.create_subscription(Bool, "anomaly", lambda m: self.flags.append(m.data), qos.ANOMALY)
        self.probe.create_subscription(
            DiagnosticArray, "anomaly_monitor/status",
            lambda m: self.status.append({"message": m.status[0].message,
                                          **{kv.key: kv.value for kv in m.status[0].values}}), qos.DETECTIONS)
        assert self.wait(lambda: self.images.get_subscription_count() > 0 and self.detections.get_subscription_count()
                         > 0 and self.flags), "monitor not reachable"

    def wait(self, done, timeout_s: float = 20.0) -> bool:
        return spin_until(self.probe, done, timeout_s)

    def drive(self, frames: list[Image] | list[CompressedImage], until, *, detections: bool = True,
              timeout_s: float = 20.0) -> bool:
        """One frame (and detections) per heartbeat, paced by the monitor's own heartbeat, until `until()`."""
        deadline = time.monotonic() + timeout_s
        k = 0
        while not until():
            if time.monotonic() > deadline:
                return False
            self.images.publish(frames[k % len(frames)])
            if detections:
                self.detections.publish(Detection2DArray())
            k += 1
            beats = len(self.flags)
            self.wait(lambda n=beats: len(self.flags) > n, 5)
        return True


@pytest.fixture
def rig_factory(ros_context: None) -> Iterator:
    rigs: list[Rig] = []

    def make(**params) -> Rig:
        rigs.append(Rig(**params))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def test_heartbeat_at_the_rate_and_quiet_on_clear_frames_with_detections(rig_factory) -> None:
    rig = rig_factory(rate_hz=10.0)
    start, first = time.monotonic(), len(rig.flags)
    assert rig.drive(CLEAR, lambda: len(rig.flags) - first >= 15)
    elapsed = time.monotonic() - start
    assert 2.0 <= (len(rig.flags) - first) / elapsed <= 40.0  # roughly 10 Hz, loosely
    assert not any(rig.flags)
    assert rig.wait(lambda: rig.status and int(rig.status[-1]["images"]) >= 15, 5)
    status = rig.status[-1]
    assert status["message"] == "clear" and status["reasons"] == "" and status["bad_images"] == "0"
    assert float(status["contrast"]) > 0.3 and float(status["brightness"]) > 0.3


def test_fog_raises_and_clear_frames_clear_after_the_hold(rig_factory) -> None:
    rig = rig_factory()
    assert rig.drive(FOGGY, lambda: rig.flags[-1])
    assert rig.wait(lambda: rig.status and rig.status[-1]["anomaly"] == "True", 5)
    assert rig.status[-1]["reasons"].startswith("low contrast")
    clear_from = time.monotonic()
    assert rig.drive(CLEAR, lambda: not rig.flags[-1])
    assert time.monotonic() - clear_from >= 0.5  # hysteresis: not before clear_after_s
    assert rig.wait(lambda: rig.status[-1]["anomaly"] == "False", 5)


def test_images_without_detections_are_a_stall_and_bad_images_are_counted(rig_factory) -> None:
    rig = rig_factory()
    bad = bgr_to_image(road_frame(0)[::2, ::2])
    bad.data = bad.data[:100]
    rig.images.publish(bad)
    assert rig.drive(CLEAR, lambda: rig.flags[-1], detections=False)
    assert rig.wait(lambda: rig.status and rig.status[-1]["reasons"].startswith("stalled: no detections for"), 5)
    assert rig.status[-1]["bad_images"] == "1"
    assert rig.drive(CLEAR, lambda: not rig.flags[-1])  # detections resume


def test_compressed_fog_measured_every_other_frame(rig_factory) -> None:
    rig = rig_factory(compressed=True, every_nth=2)
    jpegs = [CompressedImage(format="jpeg", data=cv2.imencode(".jpg", add_fog(road_frame(i)[::2, ::2], 0.7))[1]
                             .tobytes()) for i in range(4)]
    assert rig.drive(jpegs, lambda: rig.flags[-1])
    sent = rig.node.images
    for _ in range(2):  # of two frames in a row one is measured: only that one is decoded and counted bad
        rig.images.publish(CompressedImage(format="jpeg", data=b"not a jpeg"))
    assert rig.wait(lambda: rig.node.images == sent + 2, 5)
    assert rig.wait(lambda: rig.status and rig.status[-1]["bad_images"] == "1", 5)
    assert rig.node.bad_images == 1


def test_silence_is_not_an_anomaly_but_the_status_says_so(rig_factory) -> None:
    rig = rig_factory()
    assert rig.wait(lambda: rig.status and rig.status[-1]["message"] == "no images", 5)
    assert not any(rig.flags)


def test_thresholds_change_at_run_time(rig_factory) -> None:
    rig = rig_factory(raise_after_s=0.0)
    assert rig.node.set_parameters([Parameter("min_contrast", value=5.0)])[0].successful
    assert rig.drive(CLEAR, lambda: rig.flags[-1])  # now every frame is "foggy"
    assert not rig.node.set_parameters([Parameter("min_brightness", value=2.0)])[0].successful  # out of range


# -- the console script, exactly as a vehicle starts it ---------------------------------------------


def monitor_command(*extra: str) -> list[str]:
    return [str(BIN / "anomaly_monitor"), "--ros-args", "--params-file", str(ROOT / "config" / "anomaly_monitor.yaml"),
            "-r", "image:=/camera/image_raw", *extra]


@pytest.mark.slow
def test_console_script_with_params_file_and_remap(ros_context: None) -> None:
    proc = subprocess.Popen(monitor_command("-p", "image_qos:=reliable", "-p", "rate_hz:=20.0",
                                            "-p", "stall_timeout_s:=0.5", "-r", "__ns:=/vehicle"))
    probe = Node("probe")
    try:
        flags: list[bool] = []
        images = probe.create_publisher(Image, "/camera/image_raw", qos.IMAGE_RELIABLE)
        probe.create_subscription(Bool, "/vehicle/anomaly", lambda m: flags.append(m.data), qos.ANOMALY)
        assert spin_until(probe, lambda: images.get_subscription_count() > 0 and len(flags) >= 5, 60.0), "not up"
        assert not any(flags)
        while not flags[-1]:  # frames, no detections: a stall
            assert proc.poll() is None and len(flags) < 1000, "no stall reported"
            images.publish(CLEAR[0])
            beats = len(flags)
            spin_until(probe, lambda n=beats: len(flags) > n, 5.0)
    finally:
        probe.destroy_node()
        stop_process(proc)
    assert proc.returncode == 0


def test_console_script_exits_non_zero_on_a_bad_parameter() -> None:
    proc = subprocess.run(monitor_command("-p", "image_qos:=lossy"), check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "cannot start: image_qos must be one of" in proc.stderr and "Traceback" not in proc.stderr
