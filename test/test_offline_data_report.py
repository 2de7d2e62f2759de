"""split_dataset() on fake and real data, and the pruning report: JSON, plots and tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from ultralytics.data.utils import img2label_paths
from ultralytics.utils import YAML

from conftest import SHARED, shared_path
from revperception.offline.data import split_dataset
from revperception.offline.report import format_table, markdown_table, plot_report, write_report

NAMES = {0: "person", 1: "car"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fake_dataset(root: Path, n: int = 10) -> Path:
    """n tiny images with one box each, in Ultralytics' images/ + labels/ layout; train and val are the same."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i:04d}.jpg"), np.full((16, 16, 3), 10 * i, np.uint8))
        (root / "labels" / f"{i:04d}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
    (root / "notes.txt").write_text("not an image\n")
    YAML.save(root / "data.yaml", {"path": ".", "train": "images", "val": "images", "names": NAMES})
    return root / "data.yaml"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_split_is_disjoint_spread_absolute_and_loads(tmp_path: Path) -> None:
    data = _fake_dataset(tmp_path / "src")
    yaml_path = split_dataset(data, tmp_path / "split", val=3)
    assert yaml_path == (tmp_path / "split" / "data.yaml").absolute()
    cfg = YAML.load(yaml_path)
    assert cfg["path"] == str((tmp_path / "split").absolute())
    assert (cfg["train"], cfg["val"], cfg["names"]) == ("train.txt", "val.txt", NAMES)
    train, val = _lines(tmp_path / "split/train.txt"), _lines(tmp_path / "split/val.txt")
    assert [Path(p).name for p in val] == ["0001.jpg", "0005.jpg", "0008.jpg"]  # floor((j + 1/2) * 10 / 3)
    assert len(train) == 7 and not set(train) & set(val)
    assert sorted(train + val) == sorted(str(p) for p in (tmp_path / "src/images").glob("*.jpg"))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in train + val)
    assert all(Path(label).is_file() for label in img2label_paths(train + val))  # labels found, nothing copied
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["data.yaml", "train.txt", "val.txt"]


def test_split_is_deterministic_and_takes_fractions(tmp_path: Path) -> None:
    data = _fake_dataset(tmp_path / "src")
    first = split_dataset(data, tmp_path / "a", val=0.2)
    second = split_dataset(data, tmp_path / "b", val=2)
    for name in ("train.txt", "val.txt"):
        assert (first.parent / name).read_text() == (second.parent / name).read_text()
    assert [Path(p).name for p in _lines(first.parent / "val.txt")] == ["0002.jpg", "0007.jpg"]
    again = split_dataset(data, tmp_path / "a", val=0.2)  # rewriting in place gives the same files
    assert again.read_text() == first.read_text()


def test_split_reads_a_list_split(tmp_path: Path) -> None:
    data = _fake_dataset(tmp_path / "src")
    (tmp_path / "src/all.txt").write_text("".join(f"./images/{i:04d}.jpg\n" for i in range(10)))
    YAML.save(data, {"path": ".", "train": "all.txt", "val": "all.txt", "names": NAMES})
    split = split_dataset(data, tmp_path / "split", val=5)
    assert [Path(p).name for p in _lines(split.parent / "val.txt")] == [f"{i:04d}.jpg" for i in (1, 3, 5, 7, 9)]
    assert all(Path(p).is_file() for p in _lines(split.parent / "train.txt"))


@pytest.mark.parametrize("val", [0, 0.0, 0.01, 10, 11, 1.0, -1, True, "3"])
def test_split_refuses_an_empty_side(tmp_path: Path, val: Any) -> None:
    data = _fake_dataset(tmp_path / "src")
    with pytest.raises(ValueError, match="val"):
        split_dataset(data, tmp_path / "split", val=val)
    assert not (tmp_path / "split").exists()


def test_split_refuses_a_split_without_images(tmp_path: Path) -> None:
    (tmp_path / "src/images").mkdir(parents=True)
    YAML.save(tmp_path / "src/data.yaml", {"path": ".", "train": "images", "val": "images", "names": NAMES})
    with pytest.raises(ValueError, match="no images"):
        split_dataset(tmp_path / "src/data.yaml", tmp_path / "split")


def test_split_of_coco128_into_96_and_32(tmp_path: Path) -> None:
    data = shared_path("data/coco128-train/data.yaml")
    before = sorted(p.relative_to(SHARED) for p in (SHARED / "data/coco128-train").rglob("*"))
    split = split_dataset(data, tmp_path / "coco128-split", val=32)
    train, val = _lines(split.parent / "train.txt"), _lines(split.parent / "val.txt")
    assert (len(train), len(val), len(set(train + val))) == (96, 32, 128)
    names = sorted(p.name for p in (data.parent / "images/train2017").glob("*.jpg"))
    assert [Path(p).name for p in val] == names[2::4]  # every 4th image by name, from the third
    assert YAML.load(split)["names"] == YAML.load(data)["names"]
    assert sorted(p.relative_to(SHARED) for p in (SHARED / "data/coco128-train").rglob("*")) == before


def _report(passed: int = 3, steps: int = 5) -> dict[str, Any]:
    return {
        "settings": {"data": "coco128", "tolerance": 0.02},
        "dense": {"map50": 0.45, "map50_95": 0.27, "params": 1872157, "flops": 4.5e9, "latency_ms": 35.0},
        "reference": {"name": "yolov5n.pt", "map50": 0.30},
        "steps": [{"step": i, "filter_fraction": 0.05 * i, "param_sparsity": 0.09 * i, "flops_ratio": 1 - 0.08 * i,
                   "map50": 0.45 - 0.01 * i, "map50_95": 0.27 - 0.01 * i, "map50_no_finetune": 0.45 - 0.05 * i,
                   "map50_95_no_finetune": 0.27 - 0.04 * i, "latency_ms": 35 - 2 * i, "passed": i <= passed}
                  for i in range(1, steps + 1)],
        "levels": {"pruned": {"step": passed, "map50": 0.42}, "level1": {"step": 1}, "full": {"map50": 0.449}},
        "up": [{"level": "full", "epoch": 1, "map50": 0.449}],
        "timing": {"total_s": 1234.5, "down_s": 1000.0, "up_s": 234.5},
    }


def test_report_json_and_plots(tmp_path: Path) -> None:
    report = _report()
    write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "report.json").read_text().startswith('{\n  "dense": {')  # sorted keys, indent 2

    paths = plot_report(report, tmp_path / "plots", "yolov5n")
    assert paths == [tmp_path / "plots/yolov5n_map_vs_sparsity.png", tmp_path / "plots/yolov5n_latency_vs_sparsity.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert cv2.imread(str(path)).shape[:2] == (540, 840)  # 7 x 4.5 in at 120 dpi
    write_report(report, tmp_path / "report.json")  # overwriting leaves no temp files either
    plot_report({**report, "reference": None}, tmp_path / "plots", "yolov5n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["plots", "report.json", *sorted(p.name for p in paths)]


def test_tables_have_every_step(tmp_path: Path) -> None:
    report = _report(passed=3, steps=5)
    report["steps"][4]["latency_ms"] = None  # a step without a measurement still gets its row
    text, markdown = format_table(report), markdown_table(report)
    rows = text.splitlines()[2:8]
    assert [row.split()[0] for row in rows] == ["0", "1", "2", "3*", "4", "5"]
    assert rows[0].split()[1:] == ["0.0", "0.0", "1.000", "0.450", "0.270", "0.450", "35.0", "-"]
    assert rows[1].split()[1:] == ["5.0", "9.0", "0.920", "0.440", "0.260", "0.400", "33.0", "yes"]
    assert rows[5].split()[-2:] == ["-", "no"]
    assert len({len(line) for line in text.splitlines()[:8]}) == 1  # columns aligned
    assert "the `pruned` level (step 3)" in text

    lines = markdown.splitlines()
    assert lines[0].startswith("| step | filter % |") and set(lines[1]) == {"|", "-", ":"}
    assert [line.split("|")[1].strip() for line in lines[2:8]] == ["0", "1", "2", "3\\*", "4", "5"]
    assert all(line.count("|") == 10 for line in lines[:8])
