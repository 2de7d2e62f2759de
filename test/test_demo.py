"""A short `make demo`: a few seconds of the foggy drive through the real monitor and node processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from conftest import SharedPath, revperception
from revperception.bags import read_messages
from revperception.pruning import FULL, PRUNED
from revperception.tools.demo import RECORD_TOPICS, committed_checkpoint

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DEMO_CHECKPOINT = committed_checkpoint()


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason=f"{DEMO_CHECKPOINT} is missing (`make demo-model`)")
def test_short_demo_reverts_in_fog_and_returns(tmp_path: Path) -> None:
    proc = revperception("demo", "--seconds", "10", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stderr
    modes = [msg.data for topic, _, msg in read_messages(tmp_path / "record", [RECORD_TOPICS["mode"]])]
    assert modes[0] == PRUNED and FULL in modes and modes[-1] == PRUNED, modes
    levels = [dict((kv.key, kv.value) for kv in msg.status[0].values)["level"]
              for _, _, msg in read_messages(tmp_path / "record", [RECORD_TOPICS["frame_info"]])]
    assert {PRUNED, FULL} == set(levels)
    assert levels[-1] == PRUNED
    flags = [msg.data for _, _, msg in read_messages(tmp_path / "record", [RECORD_TOPICS["anomaly"]])]
    assert flags[0] is False and True in flags and flags[-1] is False
    timeline = cv2.imread(str(tmp_path / "timeline.png"))
    strip = cv2.imread(str(tmp_path / "strip.png"))
    assert timeline is not None and timeline.shape[0] > 300
    assert strip is not None and strip.shape[1] == 3 * 320  # three half-size 640x480 frames
    assert "detections per class" in proc.stdout


def test_demo_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    proc = revperception("demo", "--checkpoint", str(tmp_path / "none.rvp.safetensors"), "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "make demo-model" in proc.stderr


# -- `demo --video`: the same chain on real footage (../shared/data/drive-udacity) -------------------------------

# 6 s of 25 fps footage (150 frames at 640x360): fog from 1 to 2.5 s leaves the monitor's 1 s clear hold and the
# node's 1 s hold about 1.4 s to spare before the end, where the node must be pruned again.
VIDEO_RUN = ("--seconds", "6", "--fog", "1:2.5")


def _recorded(out: Path) -> tuple[list[str], list[tuple[str, list[str]]], list[bool]]:
    """~/mode as announced, each processed frame's (level, detected classes), and the anomaly heartbeats."""
    record = out / "record"
    modes = [msg.data for _, _, msg in read_messages(record, [RECORD_TOPICS["mode"]])]
    classes = {_stamp(msg): [d.results[0].hypothesis.class_id for d in msg.detections if d.results]
               for _, _, msg in read_messages(record, [RECORD_TOPICS["detections"]])}
    frames = [(dict((kv.key, kv.value) for kv in msg.status[0].values)["level"], classes.get(_stamp(msg), []))
              for _, _, msg in read_messages(record, [RECORD_TOPICS["frame_info"]])]
    flags = [msg.data for _, _, msg in read_messages(record, [RECORD_TOPICS["anomaly"]])]
    return modes, frames, flags


def _stamp(msg: Any) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason=f"{DEMO_CHECKPOINT} is missing (`make demo-model`)")
def test_video_demo_reverts_in_fog_and_returns(tmp_path: Path, shared: SharedPath) -> None:
    video = shared("data/drive-udacity/videos/solidWhiteRight.mp4")  # 960x540, 25 fps
    proc = revperception("demo", "--video", str(video), *VIDEO_RUN, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stderr
    assert "25 fps" in proc.stdout and "downscaled to 640x360" in proc.stdout
    assert "only knows the synthetic classes" in proc.stdout and "--no-finetune" in proc.stdout  # the default's caveat
    assert "demo: 150 frames replayed" in proc.stdout
    modes, frames, flags = _recorded(tmp_path)
    assert modes[0] == PRUNED and FULL in modes and modes[-1] == PRUNED, modes
    levels = [level for level, _ in frames]
    assert {PRUNED, FULL} == set(levels)
    assert levels[-1] == PRUNED
    assert flags[0] is False and True in flags and flags[-1] is False
    timeline = cv2.imread(str(tmp_path / "timeline.png"))
    strip = cv2.imread(str(tmp_path / "strip.png"))
    assert timeline is not None and timeline.shape[0] > 300
    assert strip is not None and strip.shape[:2] == (180, 3 * 320)  # three half-size 640x360 frames


def test_video_demo_with_release_weights_detects_cars(tmp_path: Path, shared: SharedPath) -> None:
    """A checkpoint from the YOLOv5n release weights: its full level is that model, and dash-cam footage has cars."""
    video = shared("data/drive-udacity/videos/solidWhiteRight.mp4")
    weights = shared("models/yolov5n.pt")
    checkpoint = tmp_path / "r.rvp.safetensors"
    # 320 px keeps each level under the video's 40 ms frame interval on two cores; full is still the release model.
    proc = revperception("prune", "--weights", str(weights), "--no-finetune", "--filter-fraction", "0.2",
                         "--imgsz", "320", "--out", str(checkpoint))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    proc = revperception("demo", "--video", str(video), *VIDEO_RUN, "--checkpoint", str(checkpoint),
                         "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "only knows the synthetic classes" not in proc.stdout
    _, frames, _ = _recorded(out)
    full = [classes for level, classes in frames if level == FULL]
    assert full, "the node never ran the full level"
    assert sum(classes.count("car") for classes in full) >= len(full) // 2, full  # measured: 118 cars in 83 frames
    assert "traffic_sign" not in {c for _, classes in frames for c in classes}  # COCO's names, not the demo model's
    summary = next(line for line in proc.stdout.splitlines() if "detections per class" in line)
    assert summary.startswith("demo: detections per class: car ")  # the most frequent class first


@pytest.mark.parametrize(("case", "reason"), [("missing", "does not exist"),
                                              ("not-a-video", "OpenCV cannot decode it as a video"),
                                              ("bad-fog", "--fog takes START:END")])
def test_video_demo_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, case: str, reason: str) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    video = {"missing": tmp_path / "missing.mp4"}.get(case, notes)
    fog = ["--fog", "3:1"] if case == "bad-fog" else []
    out = tmp_path / "out"
    proc = revperception("demo", "--video", str(video), *fog, "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], proc.stderr
    assert case == "bad-fog" or video.name in lines[0]
    assert not out.exists()
