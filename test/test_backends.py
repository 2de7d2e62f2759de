"""Every backend and precision against torch fp32: the same detections within a stated tolerance, `full` equal to the
dense model under the same backend and precision, switches that neither drift nor tear, and clear errors.

OpenVINO cases skip where OpenVINO is not installed; the torch backend never needs it (last test).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics.utils.metrics import box_iou

from conftest import ROOT
from revperception.checkpoint import load_reversible
from revperception.detector import ReversibleDetector, build_levels
from revperception.export import BackendError
from revperception.models import Detections
from revperception.precision import FP32, cpu_has_amx, resolve
from revperception.pruning import FULL, PRUNED
from revperception.runtime import fuse_batchnorms, reduce_precision
from revperception.tools.synthetic import road_scene

pytestmark = pytest.mark.slow  # OpenVINO compiles every level of the demo checkpoint, per precision

DEMO = ROOT / "models" / "demo-yolov5n.rvp.safetensors"  # trained: detections with clear scores to compare
SCENES = [road_scene(np.random.default_rng(seed))[0] for seed in (3, 11, 19)]
CASES = [("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]

# Tolerance, per precision, for a detection of torch fp32 (score >= 0.5) to be matched by one of the same class:
# (least IoU, largest score difference). bf16 keeps 8 bits of mantissa: boxes move by a pixel or two at 320 px.
TOLERANCE = {"fp32": (0.999, 1e-3), "bf16": (0.85, 0.03), "fp16": (0.95, 0.01)}


def needs(backend: str) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (backend torch needs nothing more)")


_built: dict[tuple[str, str], ReversibleDetector] = {}


def detector(backend: str, precision: str) -> ReversibleDetector:
    """One demo detector per backend and precision for the whole module (OpenVINO compiles each level once)."""
    needs(backend)
    if (backend, precision) not in _built:
        _built[backend, precision] = ReversibleDetector.from_checkpoint(DEMO, backend=backend, precision=precision)
    return _built[backend, precision]


def assert_matched(want: Detections, got: Detections, least_iou: float, score_tol: float) -> None:
    confident = want.scores >= 0.5
    assert confident.any(), "the reference found nothing to compare"
    overlaps = box_iou(torch.from_numpy(want.boxes[confident]), torch.from_numpy(got.boxes)).numpy()
    for i, (cls, score) in enumerate(zip(want.class_ids[confident], want.scores[confident], strict=True)):
        same = (got.class_ids == cls) & (overlaps[i] >= least_iou) & (np.abs(got.scores - score) <= score_tol)
        assert same.any(), f"no match for class {cls} score {score:.3f} (IoU >= {least_iou}, |score| <= {score_tol})"


@pytest.mark.parametrize(("backend", "precision"), CASES)
def test_every_level_detects_what_torch_fp32_detects_within_the_stated_tolerance(backend: str, precision: str) -> None:
    reference, other = detector("torch", FP32), detector(backend, precision)
    assert other.precision == precision and other.sizes == reference.sizes
    for level in reference.levels:
        reference.set_level(level)
        other.set_level(level)
        for scene in SCENES:
            got = other.predict(scene)
            assert got.level == level
            assert_matched(reference.predict(scene), got, *TOLERANCE[precision])


@pytest.mark.parametrize(("backend", "precision"), [("torch", "fp32"), *CASES])
def test_the_full_level_equals_the_dense_model_under_the_same_backend_and_precision(backend: str,
                                                                                    precision: str) -> None:
    needs(backend)
    pruned = load_reversible(DEMO)
    dense = copy.deepcopy(pruned.model)
    levels = build_levels(pruned, backend=backend, precision=precision, start_level=FULL)
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full, level = levels.run(x)
        if backend == "torch":
            fuse_batchnorms(dense)
            if levels.dtype != torch.float32:
                reduce_precision(dense, levels.dtype)
            dense = dense.to(memory_format=torch.channels_last)
            want = dense(x.to(levels.dtype).contiguous(memory_format=torch.channels_last))[0].float()
        else:
            from revperception.compiled import compile_network

            request = compile_network(dense, 320, precision).create_infer_request()
            want = torch.from_numpy(request.infer({0: x.numpy()})[0])
    assert level == FULL
    # The same weights and kernels; only the order BatchNorm is folded in differs (OpenVINO folds the dense model's
    # itself): rounding of the last bit, 1e-3 px at 320 px.
    torch.testing.assert_close(full, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("backend", "precision"), [("torch", "fp32"), *CASES])
def test_a_thousand_switches_leave_every_level_bit_identical(backend: str, precision: str) -> None:
    levels = detector(backend, precision).model
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = {name: levels.run(x, i)[0] for i, name in enumerate(levels.levels.names)}
        for i in range(1000):
            levels.set_level(levels.levels.names[i % len(levels.levels.names)])
        after = {name: levels.run(x, i)[0] for i, name in enumerate(levels.levels.names)}
    for name in levels.levels.names:
        assert torch.equal(before[name], after[name]), f"level {name} drifted"


@pytest.mark.parametrize(("backend", "precision"), [("torch", "fp32"), ("openvino", "fp32")])
def test_a_switch_requested_during_an_inference_never_tears_it(backend: str, precision: str) -> None:
    levels = detector(backend, precision).model
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = {name: levels.run(x, i)[0] for i, name in enumerate(levels.levels.names)}
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            levels.set_level(PRUNED if i % 2 else FULL)
            i += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    try:
        with torch.inference_mode():
            for _ in range(30):
                out, level = levels.run(x)
                assert torch.equal(out, reference[level]), f"a pass mixed levels (reported {level})"
                seen.add(level)
    finally:
        stop.set()
        flipper.join()
    assert seen == {FULL, PRUNED}


def test_fp16_on_openvino_runs_at_fp16_or_says_the_device_cannot() -> None:
    needs("openvino")
    try:
        other = ReversibleDetector.from_checkpoint(DEMO, backend="openvino", precision="fp16")
    except BackendError as err:  # a CPU without native fp16: refused, never run at another precision
        assert "fp16" in str(err)
        return
    assert other.precision == "fp16"
    reference = detector("torch", FP32)
    for level in reference.levels:
        reference.set_level(level)
        other.set_level(level)
        assert_matched(reference.predict(SCENES[0]), other.predict(SCENES[0]), *TOLERANCE["fp16"])


@pytest.mark.parametrize(("options", "error", "reason"), [
    ({"backend": "tensorrt"}, ValueError, "backend 'tensorrt': choose one of torch, openvino"),
    ({"precision": "fp64"}, ValueError, "precision 'fp64': choose one of"),
    ({"precision": "fp16"}, ValueError, "fp16 runs on CUDA with the torch backend"),
    ({"backend": "openvino", "device": "npu"}, BackendError, "OpenVINO could not compile for device 'npu'"),
])
def test_an_unavailable_backend_precision_or_device_is_a_clear_error(options: dict, error: type,
                                                                     reason: str) -> None:
    needs(options.get("backend", "torch"))
    with pytest.raises(error, match=reason):
        ReversibleDetector.from_checkpoint(DEMO, **options)


def test_auto_resolves_to_a_precision_the_device_runs_natively() -> None:
    assert resolve("auto", "cuda") == "fp16"
    assert resolve("auto", "cpu") == ("bf16" if cpu_has_amx() else "fp32")
    assert detector("torch", "fp32").precision == "fp32"


def test_without_openvino_the_torch_backend_runs_and_openvino_is_a_clear_error(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["openvino"] = None  # as if it were not installed: `import openvino` raises ImportError
from revperception.export import BackendError
from revperception.detector import ReversibleDetector
import numpy as np
detector = ReversibleDetector.from_checkpoint({str(DEMO)!r})
print("torch", detector.predict(np.zeros((240, 320, 3), np.uint8)).level)
try:
    ReversibleDetector.from_checkpoint({str(DEMO)!r}, backend="openvino")
except BackendError as err:
    print("error", err)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "torch pruned" in proc.stdout
    assert "error backend/format openvino needs the `openvino` package" in proc.stdout
