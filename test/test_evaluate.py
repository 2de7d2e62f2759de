"""evaluate(): yolov5 val.py's protocol on real data, for release and Ultralytics networks alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.utils import YAML

from conftest import SharedPath
from revperception.models import load_model
from revperception.offline.evaluate import evaluate
from revperception.pruning import FULL
from revperception.pruning.prune import prune_to_levels
from revperception.runtime import ReversibleModel

pytestmark = pytest.mark.slow

SUBSET = 8  # images: enough for a plausible mAP, small enough for CI on two cores


@pytest.fixture(scope="module")
def release(shared: SharedPath):
    return load_model(shared("models/yolov5n.pt"))


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory, shared: SharedPath) -> Path:
    """A data.yaml over the first SUBSET coco128 images, linked (not copied) from ../shared."""
    coco = shared("data/coco128-train")
    root = tmp_path_factory.mktemp("coco8")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for image in sorted((coco / "images/train2017").glob("*.jpg"))[:SUBSET]:
        (root / "images" / image.name).symlink_to(image)
        label = coco / "labels/train2017" / f"{image.stem}.txt"
        (root / "labels" / label.name).symlink_to(label)
    names = YAML.load(coco / "data.yaml")["names"]
    YAML.save(root / "data.yaml", {"path": ".", "train": "images", "val": "images", "names": names})
    return root / "data.yaml"


def test_release_model_reaches_a_plausible_map(release, subset: Path) -> None:
    release.model.train()
    result = evaluate(release.model, subset, batch=4)
    assert release.model.training, "evaluate hands the model back in the mode it came in"
    release.model.eval()
    instances = sum(len(p.read_text().splitlines()) for p in (subset.parent / "labels").glob("*.txt"))
    assert result["images"] == SUBSET and result["instances"] == instances
    assert 0.4 < result["map50"] <= 1.0
    assert 0.2 < result["map50_95"] < result["map50"]
    assert 0.0 < result["precision"] <= 1.0 and 0.0 < result["recall"] <= 1.0


def test_untrained_ultralytics_model_scores_near_zero(subset: Path) -> None:
    torch.manual_seed(0)
    fresh = load_model("yolov5n.yaml")
    result = evaluate(fresh.model, subset, imgsz=320, batch=8)
    assert result["images"] == SUBSET
    assert result["map50"] < 0.05


def test_missing_data_and_split_are_reported(release, subset: Path) -> None:
    with pytest.raises(FileNotFoundError):
        evaluate(release.model, subset.parent / "missing.yaml")
    with pytest.raises(ValueError, match="no 'test' split"):
        evaluate(release.model, subset, split="test")


def test_release_model_matches_yolov5_val_on_coco128(shared: SharedPath) -> None:
    # Reference: yolov5's val.py, imgsz 640, conf 0.001, IoU 0.6, batch 16, rectangular batches (../shared/README).
    # The reversible runtime's full level (BatchNorms folded, channels-last) must reach it too.
    pruned = prune_to_levels(load_model(shared("models/yolov5n.pt")), [0.36])
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, start_level=FULL)
    result = evaluate(model, shared("data/coco128-train/data.yaml"))
    assert result["images"] == 128 and result["instances"] == 929
    assert result["map50"] == pytest.approx(0.568, abs=0.015)
    assert result["map50_95"] == pytest.approx(0.365, abs=0.015)
