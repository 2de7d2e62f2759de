"""The synthetic road world: deterministic scenes and drive, labels that match what is drawn, fog where it is
said to be, a dataset Ultralytics loads, and the committed demo checkpoint that was trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from revperception.tools.synthetic import CLASSES, _Look, _populate, _render, drive, road_scene, write_dataset

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = ROOT / "models" / "demo-yolov5n.rvp.safetensors"


def _pixel_boxes(labels: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """YOLO labels -> xyxy pixel boxes."""
    _, cx, cy, w, h = labels.T
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)


def _contrast(image: np.ndarray) -> float:
    return float(image.astype(np.float32).std())


def test_scene_is_deterministic_per_seed() -> None:
    a, la = road_scene(np.random.default_rng(7))
    b, lb = road_scene(np.random.default_rng(7))
    c, _ = road_scene(np.random.default_rng(8))
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert a.tobytes() != c.tobytes()
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8


def test_drive_is_deterministic_per_seed() -> None:
    def frames(seed: int) -> list[bytes]:
        return [f.image.tobytes() + f.labels.tobytes() for f in drive(seconds=1.0, seed=seed)]

    assert frames(3) == frames(3)
    assert frames(3) != frames(4)


@pytest.mark.parametrize("seed", range(5))
def test_labels_are_normalised_and_mark_drawn_objects(seed: int) -> None:
    """Each labelled box covers pixels that differ from the same scene drawn without its objects."""
    rng = np.random.default_rng(seed)
    look, things = _Look.sample(rng), _populate(rng)
    image, labels = _render(things, look, 0.0, np.random.default_rng(0), width=640, height=480)
    empty, none = _render([], look, 0.0, np.random.default_rng(0), width=640, height=480)
    assert len(labels) > 0 and len(none) == 0
    assert set(labels[:, 0]) <= set(range(len(CLASSES)))
    assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all()
    diff = np.abs(image.astype(np.int16) - empty.astype(np.int16)).max(2) > 20
    for x0, y0, x1, y1 in _pixel_boxes(labels).round().astype(int):
        assert diff[y0:y1, x0:x1].mean() > 0.2, (x0, y0, x1, y1)


def test_drive_has_every_class_moving_objects_and_exact_timestamps() -> None:
    frames = list(drive(seconds=10.0, hz=10.0, seed=0))
    assert len(frames) == 100
    assert [f.timestamp_ns for f in frames] == [i * 100_000_000 for i in range(100)]
    assert {int(k) for f in frames for k in f.labels[:, 0]} == set(range(len(CLASSES)))

    def change(gap: int) -> float:
        return float(np.median([np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).mean()
                                for a, b in zip(frames, frames[gap:], strict=False)]))

    assert change(1) < 0.7 * change(30)  # a coherent drive: the next frame is close, 3 s later is not


def test_fog_covers_exactly_the_middle_of_the_drive_and_lowers_contrast() -> None:
    frames = list(drive(seconds=10.0, hz=5.0, fog=(0.4, 0.6), fog_density=0.7, seed=1))
    fogged = [f.fogged for f in frames]
    assert fogged == [4.0 <= i / 5.0 < 6.0 for i in range(len(frames))]
    clear = np.mean([_contrast(f.image) for f in frames if not f.fogged])
    foggy = [_contrast(f.image) for f in frames if f.fogged]
    assert max(foggy) < clear
    assert np.mean(foggy) < 0.6 * clear


def test_dataset_layout_loads_in_ultralytics_and_is_deterministic(tmp_path: Path) -> None:
    from revperception.offline.evaluate import read_data
    from revperception.offline.finetune import train_loader

    data = write_dataset(tmp_path / "a", train=6, val=3, seed=5)
    again = write_dataset(tmp_path / "b", train=6, val=3, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*") if p.name != "data.yaml")
    assert len(files) == 18
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert again.read_text() == data.read_text().replace(str(tmp_path / "a"), str(tmp_path / "b"))

    train = {p.read_bytes() for p in (tmp_path / "a" / "images" / "train").iterdir()}
    assert not train & {p.read_bytes() for p in (tmp_path / "a" / "images" / "val").iterdir()}  # held out
    cfg, paths = read_data(data, "val")
    assert cfg["names"] == dict(enumerate(CLASSES)) and Path(paths[0]).is_dir()
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "a" / "labels" / "train").iterdir())
    loader = train_loader(data, imgsz=160, batch=3)
    assert sum(len(label["cls"]) for label in loader.dataset.labels) == lines > 0  # every label line read
    assert next(iter(loader))["img"].shape == (3, 3, 160, 160)


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason="no committed demo checkpoint (make demo-model)")
def test_demo_checkpoint_detects_drive_objects() -> None:
    """At full level, clear frames of the demo drive yield detections of the right class on labelled objects."""
    import torch
    from torchvision.ops import box_iou

    from revperception.detector import ReversibleDetector

    detector = ReversibleDetector.from_checkpoint(DEMO_CHECKPOINT)
    assert detector.levels == ("pruned", "full")
    assert tuple(detector.detector.names.values()) == CLASSES
    detector.set_level("full")
    frames = [f for i, f in enumerate(drive(seconds=4.0)) if i % 10 == 0]
    for frame in frames:
        found = detector.predict(frame.image)
        iou = box_iou(torch.from_numpy(found.boxes).double(), torch.from_numpy(_pixel_boxes(frame.labels)))
        same_class = torch.from_numpy(found.class_ids)[:, None] == torch.from_numpy(frame.labels[:, 0]).long()
        assert ((iou >= 0.5) & same_class).any(), f"no correct detection at {frame.timestamp_ns} ns"
