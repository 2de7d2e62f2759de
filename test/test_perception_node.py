"""The managed perception node over real DDS: in-process for the behaviour, as a process for start-up."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2DArray

from conftest import BIN, DAMAGE_REASONS, ROOT, NodeRig, damaged_copy, resending, stop_process
from revperception.checkpoint import load_reversible
from revperception.models import Detector
from revperception.pruning import FULL, PRUNED
from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.perception_node import PerceptionNode, StartError
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame

pytestmark = pytest.mark.ros

FRAME = road_frame(0)[::4, ::4].copy()  # 160x120: quick on two cores
# ~/mode as the node offers it (reliable, latched), with a history deep enough that no change is overwritten
# before the test's callback takes it
MODE_HISTORY = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
_namespaces = iter(range(1_000_000))


def values(msg: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


class Rig(NodeRig):
    """The node in its own executor (as main() runs it), and a probe node that talks to it over DDS."""

    def __init__(self, checkpoint: Path, **params) -> None:
        # No anomaly detector runs beside the rig: the silence fail-safe is off unless a test turns it on.
        params = {"checkpoint": str(checkpoint), "imgsz": 160, "image_qos": "reliable", "anomaly_timeout_s": 0.0,
                  **params}
        super().__init__(PerceptionNode(namespace=f"/rig{next(_namespaces)}",
                                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
        self.detections: list[Detection2DArray] = []
        self.modes: list[str] = []
        self.frames: list[dict[str, str]] = []
        self.diagnostics: list[dict[str, str]] = []
        node = self.probe
        compressed = params.get("compressed", False)
        self.images = node.create_publisher(CompressedImage if compressed else Image,
                                            "image/compressed" if compressed else "image", qos.IMAGE_RELIABLE)
        self.anomaly = node.create_publisher(Bool, "anomaly", qos.ANOMALY)
        node.create_subscription(Detection2DArray, "detections", self.detections.append, qos.DETECTIONS)
        node.create_subscription(String, "revperception/mode", lambda m: self.modes.append(m.data), MODE_HISTORY)
        node.create_subscription(DiagnosticArray, "revperception/frame_info",
                                 lambda m: self.frames.append({**values(m), "stamp": m.header.stamp.sec}),
                                 qos.DETECTIONS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DETECTIONS)
        self.force = node.create_client(SetBool, "revperception/force_full")
        assert self.wait(lambda: self.images.get_subscription_count() > 0 and self.modes, 60), "node not reachable"

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        if msg.status and msg.status[0].hardware_id == self.node.get_fully_qualified_name():
            self.diagnostics.append(values(msg))

    def wait(self, done, timeout_s: float = 30.0) -> bool:
        return spin_until(self.probe, done, timeout_s)

    def send(self, frame: np.ndarray = FRAME, stamp: int | None = None) -> dict[str, str]:
        """Publish one frame and return its ~/frame_info values."""
        stamp = len(self.frames) + 1 if stamp is None else stamp
        self.images.publish(bgr_to_image(frame, Header(stamp=Time(sec=stamp), frame_id="cam")))
        assert self.wait(lambda: any(f["stamp"] == stamp for f in self.frames)), f"no frame_info for {stamp}"
        return next(f for f in self.frames if f["stamp"] == stamp)

    def set_anomaly(self, value: bool) -> None:
        self.anomaly.publish(Bool(data=value))


@pytest.fixture
def rig_factory(ros_context: None, tiny_checkpoint: Path) -> Iterator:
    rigs: list[Rig] = []

    def make(**params) -> Rig:
        rigs.append(Rig(tiny_checkpoint, **params))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def test_frames_get_detections_headers_and_frame_info(rig_factory) -> None:
    rig = rig_factory(conf=0.0, max_det=20)
    assert rig.modes == [PRUNED]
    for stamp in (1, 2, 3):
        info = rig.send(stamp=stamp)
        assert info["level"] == PRUNED and float(info["latency_ms"]) > 0 and info["dropped_frames"] == "0"
    assert rig.wait(lambda: len(rig.detections) == 3)
    assert [d.header.stamp.sec for d in rig.detections] == [1, 2, 3]
    assert all(d.header.frame_id == "cam" for d in rig.detections)
    assert 0 < len(rig.detections[0].detections) <= 20
    assert rig.detections[0].detections[0].results[0].hypothesis.class_id in rig.node.detector.detector.names.values()


def test_anomaly_switches_to_full_before_the_next_frame_and_back_after_the_hold(rig_factory) -> None:
    rig = rig_factory(anomaly_clear_hold_s=0.5)
    assert rig.send()["level"] == PRUNED
    rig.set_anomaly(True)
    assert rig.wait(lambda: rig.modes[-1] == FULL)
    assert rig.send()["level"] == FULL  # the first frame started after the anomaly runs the full architecture
    rig.set_anomaly(False)
    calm_sent = time.monotonic()
    assert rig.wait(lambda: rig.modes[-1] == PRUNED)
    assert time.monotonic() - calm_sent >= 0.5  # hysteresis: not before the hold
    assert rig.send()["level"] == PRUNED
    assert rig.modes == [PRUNED, FULL, PRUNED]


def test_full_level_detections_equal_the_dense_model(rig_factory, tiny_checkpoint: Path) -> None:
    rig = rig_factory(start_level=FULL, conf=0.0, max_det=30)
    assert rig.send()["level"] == FULL
    assert rig.wait(lambda: rig.detections)
    got = rig.detections[0].detections
    dense = load_reversible(tiny_checkpoint)
    want = Detector(copy.deepcopy(dense.model), dense.names, stride=dense.stride, imgsz=160, conf=0.0,
                    max_det=30).predict(FRAME)
    assert len(got) == len(want) > 0
    centres = np.array([[d.bbox.center.position.x, d.bbox.center.position.y] for d in got])
    np.testing.assert_allclose(centres, (want.boxes[:, :2] + want.boxes[:, 2:]) / 2, atol=1e-2)
    assert [d.results[0].hypothesis.class_id for d in got] == want.class_names


@pytest.mark.slow
def test_the_openvino_backend_runs_each_level_and_reverts_on_an_anomaly(rig_factory) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (backend torch needs nothing more)")
    rig = rig_factory(backend="openvino", precision="fp32", anomaly_clear_hold_s=0.0)
    assert rig.send()["level"] == PRUNED
    rig.set_anomaly(True)
    assert rig.wait(lambda: rig.modes[-1] == FULL)
    assert rig.send()["level"] == FULL
    assert rig.wait(lambda: len(rig.detections) == 2) and all(d.detections for d in rig.detections)
    assert rig.wait(lambda: rig.diagnostics, 5)
    assert rig.diagnostics[-1]["backend"] == "openvino" and rig.diagnostics[-1]["precision"] == "fp32"


def test_a_silent_anomaly_detector_means_full(rig_factory) -> None:
    rig = rig_factory(anomaly_timeout_s=0.3, anomaly_clear_hold_s=0.0)
    assert rig.wait(lambda: rig.modes[-1] == FULL)  # never heard from
    assert rig.wait(lambda: rig.diagnostics and rig.diagnostics[-1]["reason"] == "timeout", 5)
    rig.set_anomaly(False)
    assert rig.wait(lambda: rig.modes[-1] == PRUNED)
    assert rig.wait(lambda: rig.modes[-1] == FULL)  # silent again


def test_force_full_holds_until_released(rig_factory) -> None:
    rig = rig_factory(anomaly_clear_hold_s=0.0)

    def call(hold: bool) -> SetBool.Response:
        assert rig.force.wait_for_service(timeout_sec=30)
        future = rig.force.call_async(SetBool.Request(data=hold))
        assert rig.wait(future.done)
        return future.result()

    assert call(True).success and rig.wait(lambda: rig.modes[-1] == FULL)
    rig.set_anomaly(True)
    rig.set_anomaly(False)
    assert rig.send()["level"] == FULL
    assert call(False).message == "level pruned (calm)"
    assert rig.wait(lambda: rig.modes[-1] == PRUNED)
    assert rig.send()["level"] == PRUNED


def _bad_images() -> dict[str, Image]:
    good = bgr_to_image(FRAME)
    cases = {"unsupported encoding": copy.deepcopy(good), "short step": copy.deepcopy(good),
             "truncated data": copy.deepcopy(good), "empty": Image(encoding="bgr8"),
             "absurdly large": copy.deepcopy(good)}
    cases["unsupported encoding"].encoding = "nv12"
    cases["short step"].step = good.step - 1
    cases["truncated data"].data = good.data[: len(good.data) // 2]
    cases["absurdly large"].width = cases["absurdly large"].height = 100_000
    return cases


def test_bad_images_are_skipped_counted_and_never_stop_the_node(rig_factory) -> None:
    rig = rig_factory()
    cases = _bad_images()
    for count, (case, msg) in enumerate(cases.items(), 1):
        rig.images.publish(msg)
        assert rig.wait(lambda n=count: rig.node.stats.bad_frames == n), f"{case} was not counted"
    assert rig.send(stamp=1)["level"] == PRUNED  # the node is alive and still detecting
    assert rig.wait(lambda: rig.diagnostics and rig.diagnostics[-1]["bad_frames"] == str(len(cases)), 10)
    assert rig.node.stats.errors == 0


def test_compressed_jpeg_and_png_and_a_corrupt_one(rig_factory) -> None:
    rig = rig_factory(compressed=True, start_level=FULL)
    for fmt, ext in (("jpeg", ".jpg"), ("png", ".png")):
        data = cv2.imencode(ext, FRAME)[1].tobytes()
        stamp = len(rig.frames) + 1
        rig.images.publish(CompressedImage(header=Header(stamp=Time(sec=stamp)), format=fmt, data=data))
        assert rig.wait(lambda s=stamp: len(rig.frames) >= s), f"no frame_info for {fmt}"
    # One at a time: only the frame the worker takes is decoded (a superseded one counts as dropped).
    for count, data in enumerate((b"\xff\xd8\xff\xe0 not really a jpeg", b""), start=1):
        rig.images.publish(CompressedImage(format="jpeg", data=data))
        assert rig.wait(lambda n=count: rig.node.stats.bad_frames == n, 10)
    assert rig.node.stats.frames == 2


@pytest.mark.slow
def test_a_1khz_anomaly_flood_for_5_s(rig_factory) -> None:
    rig = rig_factory(anomaly_clear_hold_s=0.0, image_qos="sensor_data")  # no hold: every toggle is a switch
    flood = subprocess.Popen([sys.executable, str(ROOT / "test" / "helpers" / "anomaly_flood.py"),
                              f"{rig.ns}/anomaly", "1000", "5"], stdout=subprocess.PIPE, text=True)
    camera = rig.probe.create_publisher(Image, "image", qos.IMAGE_SENSOR_DATA)  # best effort, like a camera
    frame = bgr_to_image(FRAME)
    assert rig.wait(lambda: rig.node.stats.anomaly_messages > 0, 60), "the flood never arrived"
    while flood.poll() is None:  # a frame each time the previous one is reported, until the flood ends
        reported = len(rig.frames)
        frame.header.stamp = Time(sec=reported + 1)
        camera.publish(frame)
        rig.wait(lambda n=reported: len(rig.frames) > n or flood.poll() is not None, 5)
    sent = int(flood.stdout.read())
    assert flood.returncode == 0
    assert rig.wait(lambda: rig.node.stats.anomaly_messages == sent, 60), (
        f"{rig.node.stats.anomaly_messages} of {sent} anomaly messages arrived")
    assert rig.node.detector.level == FULL  # the flood ended on an anomaly
    assert rig.wait(lambda: rig.modes[-1] == FULL)  # and ~/mode's last word says so
    assert rig.send(stamp=10**6)["level"] == FULL
    assert {f["level"] for f in rig.frames} == {PRUNED, FULL}
    assert rig.node.stats.errors == 0 and rig.node.stats.switches > 1000
    rig.set_anomaly(False)
    assert rig.wait(lambda: rig.modes[-1] == PRUNED)


def test_parameters_change_at_run_time_within_their_ranges(rig_factory) -> None:
    rig = rig_factory(conf=0.0, max_det=5)
    assert rig.send()["detections"] == "5"
    assert rig.node.set_parameters([Parameter("max_det", value=2)])[0].successful
    assert rig.send()["detections"] == "2"
    refused = rig.node.set_parameters([Parameter("conf", value=1.5), Parameter("checkpoint", value="/x"),
                                       Parameter("classes", value=[-1])])
    assert not any(r.successful for r in refused)
    assert rig.node.set_parameters([Parameter("anomaly_clear_hold_s", value=7.0)])[0].successful
    assert rig.node.policy.clear_hold_s == 7.0


def test_deactivate_releases_the_camera_and_activate_resumes(rig_factory) -> None:
    rig = rig_factory()
    rig.node.trigger_deactivate()
    assert rig.wait(lambda: rig.images.get_subscription_count() == 0)
    rig.node.trigger_activate()
    assert rig.wait(lambda: rig.images.get_subscription_count() > 0)
    assert rig.send()["level"] == PRUNED


@pytest.mark.parametrize("damage", sorted(DAMAGE_REASONS))
def test_a_bad_checkpoint_refuses_to_start(ros_context: None, tiny_checkpoint: Path, tmp_path: Path,
                                           damage: str) -> None:
    bad = damaged_copy(tiny_checkpoint, tmp_path, damage)
    with pytest.raises(StartError, match=f"cannot load checkpoint .*{DAMAGE_REASONS[damage]}"):
        PerceptionNode(parameter_overrides=[Parameter("checkpoint", value=str(bad))])


@pytest.mark.parametrize(("params", "reason"), [({"checkpoint": ""}, "'checkpoint' is not set"),
                                                ({"start_level": "fastest"}, "unknown level 'fastest'"),
                                                ({"backend": "tensorrt"}, "backend 'tensorrt': choose one of"),
                                                ({"precision": "fp16"}, "fp16 runs on CUDA with the torch backend")])
def test_missing_checkpoint_or_unknown_level_refuses_to_start(ros_context: None, tiny_checkpoint: Path,
                                                              params: dict, reason: str) -> None:
    params = {"checkpoint": str(tiny_checkpoint), **params}
    with pytest.raises(StartError, match=reason):
        PerceptionNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


# -- the console script, exactly as a vehicle starts it ---------------------------------------------


@contextmanager
def probing(*commands: list[str], name: str = "probe") -> Iterator[tuple[Node, list[subprocess.Popen]]]:
    """Start `commands` as processes and a probe node to talk to them; on the way out, the probe is destroyed and
    every process stopped as `ros2 launch` stops it (check their return codes after)."""
    procs = [subprocess.Popen(command) for command in commands]
    probe = Node(name)
    try:
        yield probe, procs
    finally:
        probe.destroy_node()
        for proc in reversed(procs):
            stop_process(proc)


def node_command(checkpoint: Path | str, *extra: str) -> list[str]:
    return [str(BIN / "perception_node"), "--ros-args", "--params-file", str(ROOT / "config" / "perception.yaml"),
            "-p", f"checkpoint:={checkpoint}", "-r", "image:=/camera/image_raw", *extra]


@pytest.mark.slow
def test_console_script_with_params_file_and_remap(ros_context: None, tiny_checkpoint: Path) -> None:
    command = node_command(tiny_checkpoint, "-p", "image_qos:=reliable", "-p", "imgsz:=160",
                           "-p", "anomaly_timeout_s:=0.0",  # no monitor here
                           "-r", "__ns:=/vehicle")
    with probing(command) as (probe, (proc,)):
        replies: list[Detection2DArray] = []
        modes: list[str] = []
        images = probe.create_publisher(Image, "/camera/image_raw", qos.IMAGE_RELIABLE)
        anomaly = probe.create_publisher(Bool, "/vehicle/anomaly", qos.ANOMALY)
        probe.create_subscription(Detection2DArray, "/vehicle/detections", replies.append, qos.DETECTIONS)
        probe.create_subscription(String, "/vehicle/revperception/mode", lambda m: modes.append(m.data),
                                  MODE_HISTORY)
        assert spin_until(probe, lambda: images.get_subscription_count() > 0 and modes, 120.0), "node not up"
        assert modes == [PRUNED]
        assert spin_until(probe, resending(anomaly, Bool(data=True), lambda: modes[-1] == FULL), 30.0)
        frame = bgr_to_image(FRAME, Header(stamp=Time(sec=7), frame_id="cam"))
        assert spin_until(probe, resending(images, frame, lambda: bool(replies)), 60.0), "no detections"
        assert replies[0].header.stamp.sec == 7
        assert proc.poll() is None
    assert proc.returncode == 0


@pytest.mark.slow
def test_a_lifecycle_manager_drives_every_transition_over_the_standard_services(ros_context: None,
                                                                                 tiny_checkpoint: Path) -> None:
    """autostart false, then configure, activate, deactivate, cleanup, configure, activate from another process
    through ~/change_state and ~/get_state, as nav2's lifecycle manager or `ros2 lifecycle set` would."""
    command = node_command(tiny_checkpoint, "-p", "imgsz:=160", "-p", "image_qos:=reliable", "-p", "autostart:=false",
                           "-p", "anomaly_timeout_s:=0.0", "-r", "__ns:=/managed")
    with probing(command, name="manager") as (probe, (node,)):
        change = probe.create_client(ChangeState, "/managed/revperception/change_state")
        get = probe.create_client(GetState, "/managed/revperception/get_state")
        images = probe.create_publisher(Image, "/camera/image_raw", qos.IMAGE_RELIABLE)
        stamps: list[int] = []
        probe.create_subscription(Detection2DArray, "/managed/detections", lambda m: stamps.append(m.header.stamp.sec),
                                  qos.DETECTIONS)
        assert change.wait_for_service(timeout_sec=120) and get.wait_for_service(timeout_sec=30)

        def call(client: Any, request: Any) -> Any:
            future = client.call_async(request)
            assert spin_until(probe, future.done, 120.0), "no answer"
            return future.result()

        def state() -> str:
            return call(get, GetState.Request()).current_state.label

        def transition(transition_id: int, expected: str) -> None:
            assert call(change, ChangeState.Request(transition=Transition(id=transition_id))).success
            assert state() == expected

        def frame(stamp: int) -> Image:
            return bgr_to_image(FRAME, Header(stamp=Time(sec=stamp), frame_id="cam"))

        assert state() == "unconfigured"
        transition(Transition.TRANSITION_CONFIGURE, "inactive")
        for stamp in (1, 2):  # inactive: no subscription, nothing published
            images.publish(frame(stamp))
        transition(Transition.TRANSITION_ACTIVATE, "active")
        assert spin_until(probe, resending(images, frame(3), lambda: 3 in stamps), 60.0), "no detections once active"
        transition(Transition.TRANSITION_DEACTIVATE, "inactive")
        images.publish(frame(4))
        transition(Transition.TRANSITION_CLEANUP, "unconfigured")
        transition(Transition.TRANSITION_CONFIGURE, "inactive")
        images.publish(frame(5))
        transition(Transition.TRANSITION_ACTIVATE, "active")
        assert spin_until(probe, resending(images, frame(6), lambda: 6 in stamps), 60.0), "no detections again"
        assert set(stamps) == {3, 6}  # nothing from the frames sent while inactive (1, 2, 4, 5)
        assert node.poll() is None
    assert node.returncode == 0


@pytest.mark.slow
def test_with_the_shipped_parameters_a_dead_monitor_means_full(ros_context: None, tiny_checkpoint: Path) -> None:
    """The launch file's pair, started from the shipped parameter files: kill the monitor and the node goes full
    on its own within `anomaly_timeout_s` of the last heartbeat (fail-safe by default)."""
    shipped = yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())["/**"]["ros__parameters"]
    monitor_rate = yaml.safe_load((ROOT / "config" / "anomaly_monitor.yaml").read_text())["/**"]["ros__parameters"]
    assert 1.0 / monitor_rate["rate_hz"] < shipped["anomaly_timeout_s"] <= 1.0  # beats in time; full within 1 s
    monitor = [str(BIN / "anomaly_monitor"), "--ros-args", "--params-file",
               str(ROOT / "config" / "anomaly_monitor.yaml"), "-r", "__ns:=/failsafe"]
    with probing(monitor, node_command(tiny_checkpoint, "-p", "imgsz:=160", "-r", "__ns:=/failsafe")) as (
            probe, (monitor_proc, node)):
        modes: list[str] = []
        reasons: list[str] = []
        probe.create_subscription(String, "/failsafe/revperception/mode", lambda m: modes.append(m.data),
                                  MODE_HISTORY)

        def on_diagnostics(msg: DiagnosticArray) -> None:
            if msg.status and msg.status[0].hardware_id == "/failsafe/revperception":
                reasons.append(values(msg)["reason"])

        probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.DETECTIONS)
        assert spin_until(probe, lambda: modes and modes[-1] == PRUNED, 120.0), f"never calm: {modes}"
        monitor_proc.kill()
        monitor_proc.wait()
        killed = time.monotonic()
        assert spin_until(probe, lambda: modes[-1] == FULL, 30.0), "a dead monitor left the node pruned"
        print(f"monitor killed -> ~/mode full after {time.monotonic() - killed:.2f} s")
        assert spin_until(probe, lambda: reasons and reasons[-1] == "timeout", 10.0)
    assert node.returncode == 0


def test_console_script_exits_non_zero_on_a_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.rvp.safetensors"
    bad.write_bytes(b"\x00" * 64)
    proc = subprocess.run(node_command(bad), check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"cannot load checkpoint '{bad}'" in proc.stderr and "Traceback" not in proc.stderr
