"""`revperception export`: a level as a standalone ONNX or OpenVINO model that runs like the level itself."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import revperception
from revperception.checkpoint import load_reversible
from revperception.detector import build_levels

pytestmark = pytest.mark.slow

X = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))


def level_output(checkpoint: Path, level: str) -> np.ndarray:
    levels = build_levels(load_reversible(checkpoint), start_level=level)
    with torch.inference_mode():
        return levels.run(X)[0].numpy()


@pytest.mark.parametrize("level", ["pruned", "full"])
def test_an_onnx_level_runs_in_onnx_runtime_like_the_level(tiny_checkpoint: Path, tmp_path: Path, level: str) -> None:
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    out = tmp_path / f"{level}.onnx"
    proc = revperception("export", "--checkpoint", str(tiny_checkpoint), "--level", level, "--format", "onnx",
                         "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, 3, 160, 160]]
    got = session.run(None, {"images": X.numpy()})[0]
    np.testing.assert_allclose(got, level_output(tiny_checkpoint, level), rtol=1e-4, atol=1e-3)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["level"] == level and meta["imgsz"] == "[160, 160]" and meta["stride"] == "32"
    assert ast.literal_eval(meta["names"])[0] == "person"  # a dict literal, as Ultralytics writes and reads it


def test_an_openvino_level_is_a_folder_ultralytics_and_openvino_read(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    out = tmp_path / "pruned_openvino_model"
    out.mkdir()
    (out / "stale.xml").write_text("an earlier export")  # replaced whole, never merged
    proc = revperception("export", "--checkpoint", str(tiny_checkpoint), "--format", "openvino", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metadata.yaml", "pruned.bin", "pruned.xml"]
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["level"] == "pruned" and meta["imgsz"] == [160, 160] and meta["names"][0] == "person"
    compiled = ov.Core().compile_model(str(out / "pruned.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled.create_infer_request().infer({0: X.numpy()})[0]
    np.testing.assert_allclose(got, level_output(tiny_checkpoint, "pruned"), rtol=1e-4, atol=1e-3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_an_unknown_level_or_format_writes_nothing_and_says_why(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    proc = revperception("export", "--checkpoint", str(tiny_checkpoint), "--level", "fastest", "--format", "onnx",
                         "--out", str(out))
    assert proc.returncode == 1 and "no level 'fastest'" in proc.stderr and "Traceback" not in proc.stderr
    proc = revperception("export", "--checkpoint", str(tiny_checkpoint), "--format", "tflite", "--out", str(out))
    assert proc.returncode == 2 and "invalid choice: 'tflite'" in proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
