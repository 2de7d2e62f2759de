"""yolov5 release checkpoints: weights-only unpickling into stubs, the rebuilt network, its head, its detections."""

from __future__ import annotations

import collections
import copy
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.ops import xywh2xyxy

from conftest import SharedPath
from revperception.models import Detector, build_model, load_model
from revperception.models.release import (
    AnchorDetect,
    build_release_model,
    is_release_checkpoint,
    load_release_checkpoint,
)

# A two-level yolov5 in the release yaml's own notation (strings for nc/anchors/None, as yolov5 writes them).
TINY_CFG = {
    "nc": 3, "depth_multiple": 0.33, "width_multiple": 0.25,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
    "backbone": [
        [-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]], [-1, 1, "SPPF", [512, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 1, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]], [[-1, 6], 1, "Concat", [1]], [-1, 1, "C3", [512, False]],
        [[9, 12], 1, "Detect", ["nc", "anchors"]],
    ],
}


@pytest.fixture(scope="module")
def release(shared: SharedPath):
    return load_model(shared("models/yolov5n.pt"))


def test_release_checkpoint_loads_as_float32_yolov5n(release, shared: SharedPath) -> None:
    assert is_release_checkpoint(shared("models/yolov5n.pt"))
    allowed = set(torch.serialization.get_safe_globals())
    load_release_checkpoint(shared("models/yolov5n.pt"))
    assert set(torch.serialization.get_safe_globals()) == allowed  # the stubs are allowlisted for our load only
    assert release.arch["family"] == "yolov5-release"
    assert release.names[0] == "person" and release.names[79] == "toothbrush"
    assert release.stride == 32 and release.model.stride.tolist() == [8, 16, 32]
    assert sum(p.numel() for p in release.model.parameters()) == 1_872_157  # yolov5n's published size
    assert all(p.dtype == torch.float32 for p in release.model.parameters())
    assert not release.model.training
    assert {m.eps for m in release.model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_release_arch_rebuilds_the_same_network(release) -> None:
    fresh = build_model(release.arch)
    fresh.load_state_dict(release.model.state_dict(), strict=True)
    x = torch.rand(1, 3, 256, 320)
    torch.testing.assert_close(fresh(x), release.model(x))


def test_release_detections_match_the_labels(release, shared: SharedPath) -> None:
    image_path = shared("data/coco128-train/images/train2017/000000000009.jpg")
    labels = np.loadtxt(shared("data/coco128-train/labels/train2017/000000000009.txt"))
    image = cv2.imread(str(image_path))
    h, w = image.shape[:2]
    det = Detector(release.model, release.names, stride=release.stride, imgsz=640).predict(image)
    assert {"bowl", "broccoli"} <= set(det.class_names)
    truth = xywh2xyxy(torch.tensor(labels[:, 1:], dtype=torch.float32)) * torch.tensor([w, h, w, h])
    iou = box_iou(torch.from_numpy(det.boxes), truth)
    for i, name in enumerate(det.class_names):
        if name in {"bowl", "broccoli"}:  # each lands on a labelled box of its class
            same_class = torch.from_numpy(labels[:, 0] == det.class_ids[i])
            assert float((iou[i] * same_class).max()) > 0.75


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    """Unpickling this calls `call(*args)`, as a hostile checkpoint would run its code."""

    def __init__(self, call: object, *args: str) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return (self.call, self.args)


@pytest.mark.parametrize("call", [_touch, os.system], ids=["own_function", "os.system"])
def test_foreign_globals_are_refused_without_running_them(tmp_path: Path, call: object) -> None:
    marker, ckpt = tmp_path / "ran", tmp_path / "hostile.pt"
    args = (str(marker),) if call is _touch else (f"touch '{marker}'",)
    torch.save({"model": _Payload(call, *args), "epoch": 1}, ckpt)
    allowed = set(torch.serialization.get_safe_globals())
    assert not is_release_checkpoint(ckpt)
    name = r"\S*_touch" if call is _touch else r"(posix|nt)\.system"
    with pytest.raises(ValueError, match=rf"{ckpt}: refusing to unpickle {name}: outside the names"):
        load_release_checkpoint(ckpt)
    assert not marker.exists()
    assert set(torch.serialization.get_safe_globals()) == allowed
    if call is _touch:
        torch.load(ckpt, weights_only=False)  # the unrestricted unpickler does run it: the payload is real
        assert marker.exists()


def test_names_torch_allows_but_releases_never_use_are_refused(tmp_path: Path) -> None:
    # torch's weights-only allowlist is wider than a release file's names: Counter, bytes (_codecs.encode), Size...
    ckpt = tmp_path / "counter.pt"
    torch.save({"model": collections.Counter(a=1), "extra": (b"x", torch.Size([1]))}, ckpt)
    torch.load(ckpt, weights_only=True)  # torch alone accepts it
    with pytest.raises(ValueError, match=r"refusing to unpickle _codecs\.encode, collections\.Counter, torch\.Size:"):
        load_release_checkpoint(ckpt)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_pickles_the_name_check_cannot_read_are_refused_by_torch(tmp_path: Path) -> None:
    # Protocol 4 names globals by STACK_GLOBAL, which the name check does not see; torch's unpickler refuses it.
    marker, ckpt = tmp_path / "ran", tmp_path / "protocol4.pt"
    torch.save({"model": _Payload(_touch, str(marker))}, ckpt, pickle_protocol=4)
    with pytest.raises(ValueError, match="weights-only unpickler refused it"):
        load_release_checkpoint(ckpt)
    assert not marker.exists()


def test_ultralytics_checkpoints_and_yamls_are_not_release(tmp_path: Path) -> None:
    ckpt = tmp_path / "ultralytics.pt"
    torch.save({"model": DetectionModel("yolov5n.yaml", verbose=False)}, ckpt)
    assert not is_release_checkpoint(ckpt)
    with pytest.raises(ValueError, match="refusing to unpickle ultralytics"):
        load_release_checkpoint(ckpt)
    yaml = tmp_path / "model.yaml"
    yaml.write_text("nc: 80\n")
    assert not is_release_checkpoint(yaml)
    assert not is_release_checkpoint(tmp_path / "missing.pt")


def test_missing_and_corrupt_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_release_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert not is_release_checkpoint(garbage)
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_release_checkpoint(garbage)


def test_fresh_model_from_a_config() -> None:
    model = build_model({"family": "yolov5-release", "cfg": TINY_CFG})
    assert not model.training and model.stride.tolist() == [8, 16]
    head = model.head
    assert isinstance(head, AnchorDetect)
    torch.testing.assert_close(head.anchors[1] * 16, torch.tensor([[30.0, 61], [62, 45], [59, 119]]))
    x = torch.rand(1, 3, 64, 96)
    anchors = 3 * (8 * 12 + 4 * 6)
    assert tuple(model(x).shape) == (1, 4 + 3, anchors)
    twin = build_release_model(TINY_CFG)
    twin.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(twin(x), model(x))
    model.train()
    assert [tuple(p.shape) for p in model(x)] == [(1, 3, 8, 12, 8), (1, 3, 4, 6, 8)]


def test_head_decodes_like_yolov5() -> None:
    # Zero head convs: every sigmoid is 0.5, so boxes sit at cell centres with the anchors' sizes, scores 0.25.
    model = build_release_model(TINY_CFG)
    for conv in model.head.m:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    y = model(torch.rand(2, 3, 64, 96))
    level0 = y[0, :, : 3 * 8 * 12].T.reshape(3, 8, 12, 7)  # anchor, row, column, channel
    torch.testing.assert_close(level0[1, 2, 5, :4], torch.tensor([5.5 * 8, 2.5 * 8, 16, 30]))
    level1 = y[1, :, 3 * 8 * 12 :].T.reshape(3, 4, 6, 7)
    torch.testing.assert_close(level1[2, 3, 0, :4], torch.tensor([0.5 * 16, 3.5 * 16, 59, 119]))
    torch.testing.assert_close(y[:, 4:], torch.full_like(y[:, 4:], 0.25))


def test_unknown_blocks_are_refused() -> None:
    cfg = copy.deepcopy(TINY_CFG)
    cfg["backbone"][0] = [-1, 1, "Focus", [64, 3]]
    with pytest.raises(ValueError, match="'Focus' is not a yolov5 v6 release block"):
        build_release_model(cfg)
