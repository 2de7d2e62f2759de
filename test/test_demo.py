"""A short `make demo`: a few seconds of the foggy drive through the real monitor and node processes."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from conftest import revperception
from revperception.bags import read_messages
from revperception.pruning import FULL, PRUNED
from revperception.tools.demo import DEMO_CHECKPOINT, RECORD_TOPICS


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
