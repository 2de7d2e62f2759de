"""yolov5 release checkpoints: restricted unpickling, the rebuilt network, its anchor head and its detections."""

from __future__ import annotations

import copy
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
    """Unpickling this calls `_touch` on its path, as a hostile checkpoint would run its code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (_touch, (str(self.path),))


def test_foreign_globals_are_refused_without_running_them(tmp_path: Path) -> None:
    marker, ckpt = tmp_path / "ran", tmp_path / "hostile.pt"
    torch.save({"model": _Payload(marker), "epoch": 1}, ckpt)
    assert not is_release_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"refusing to unpickle \S*_touch"):
        load_release_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the unrestricted unpickler does run it: the payload is real
    assert marker.exists()


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
