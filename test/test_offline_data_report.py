"""split_dataset() (two- and three-way, several sources) on fake and real data, and the pruning report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from ultralytics.data.utils import img2label_paths
from ultralytics.utils import YAML

from conftest import SHARED, SharedPath
from revperception.offline.data import split_dataset
from revperception.offline.report import format_table, front_map50_at, markdown_table, plot_report, write_report

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
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["data.yaml", "split.json", "train.txt", "val.txt"]


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


def test_split_of_coco128_into_96_and_32(tmp_path: Path, shared: SharedPath) -> None:
    data = shared("data/coco128-train/data.yaml")
    before = sorted(p.relative_to(SHARED) for p in (SHARED / "data/coco128-train").rglob("*"))
    split = split_dataset(data, tmp_path / "coco128-split", val=32)
    train, val = _lines(split.parent / "train.txt"), _lines(split.parent / "val.txt")
    assert (len(train), len(val), len(set(train + val))) == (96, 32, 128)
    names = sorted(p.name for p in (data.parent / "images/train2017").glob("*.jpg"))
    assert [Path(p).name for p in val] == names[2::4]  # every 4th image by name, from the third
    assert YAML.load(split)["names"] == YAML.load(data)["names"]
    assert sorted(p.relative_to(SHARED) for p in (SHARED / "data/coco128-train").rglob("*")) == before


def _fake_unlabelled(folder: Path, n: int = 5) -> Path:
    """n tiny images without labels (frames for label-free distillation), and a file that is not an image."""
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"frame{i:03d}.png"), np.full((16, 16, 3), 7 * i, np.uint8))
    (folder / "README.txt").write_text("no labels here\n")
    return folder


def _three_way(tmp_path: Path, out: str = "split", **kwargs: Any) -> Path:
    """Two labelled sources (12 and 20 images, same file names) and an unlabelled folder, split 0.25/0.25."""
    a = tmp_path / "a/data.yaml" if (tmp_path / "a").exists() else _fake_dataset(tmp_path / "a", 12)
    b = tmp_path / "b/data.yaml" if (tmp_path / "b").exists() else _fake_dataset(tmp_path / "b", 20)
    frames = tmp_path / "frames" if (tmp_path / "frames").exists() else _fake_unlabelled(tmp_path / "frames")
    return split_dataset([a, b], tmp_path / out, val=0.25, test=0.25, unlabelled=[frames], **kwargs)


def test_split_three_ways_over_two_sources_and_unlabelled(tmp_path: Path) -> None:
    yaml_path = _three_way(tmp_path)
    cfg = YAML.load(yaml_path)
    assert list(cfg) == ["path", "train", "val", "test", "names"]
    assert (cfg["train"], cfg["val"], cfg["test"], cfg["names"]) == ("train.txt", "val.txt", "test.txt", NAMES)
    lists = {s: _lines(yaml_path.parent / f"{s}.txt") for s in ("train", "val", "test")}
    every = [p for paths in lists.values() for p in paths]
    sources = {s: sorted(str(p) for p in (tmp_path / s).rglob("*.*") if p.suffix in (".jpg", ".png"))
               for s in ("a", "b", "frames")}
    assert sorted(every) == sorted(p for paths in sources.values() for p in paths)  # each image once, in one split
    assert not set(sources["frames"]) & set(lists["val"] + lists["test"])  # unlabelled: train only
    in_dir = {s: {split: [p for p in paths if p.startswith(str(tmp_path / s) + "/")] for split, paths in lists.items()}
              for s in ("a", "b")}
    # a: 12 images, test (2j+1)*12//6 = 2, 6, 10; val (2j+1)*9//6 = 1, 4, 7 of the 9 left = images 1, 5, 9
    assert [Path(p).name for p in in_dir["a"]["test"]] == ["0002.jpg", "0006.jpg", "0010.jpg"]
    assert [Path(p).name for p in in_dir["a"]["val"]] == ["0001.jpg", "0005.jpg", "0009.jpg"]
    assert {s: len(v) for s, v in in_dir["b"].items()} == {"train": 10, "val": 5, "test": 5}
    assert all(Path(label).is_file() for label in img2label_paths(lists["val"] + lists["test"]))
    summary = json.loads((yaml_path.parent / "split.json").read_text())
    assert {s: part["per_source"] for s, part in summary["splits"].items()} == {
        "train": {str(tmp_path / "a/data.yaml"): 6, str(tmp_path / "b/data.yaml"): 10, str(tmp_path / "frames"): 5},
        "val": {str(tmp_path / "a/data.yaml"): 3, str(tmp_path / "b/data.yaml"): 5, str(tmp_path / "frames"): 0},
        "test": {str(tmp_path / "a/data.yaml"): 3, str(tmp_path / "b/data.yaml"): 5, str(tmp_path / "frames"): 0}}
    assert {s: part["images"] for s, part in summary["splits"].items()} == {"train": 21, "val": 8, "test": 8}
    assert yaml_path.read_text().startswith("# 21 train / 8 val / 8 test images")


def test_split_three_ways_is_deterministic(tmp_path: Path) -> None:
    first, second = _three_way(tmp_path, "one"), _three_way(tmp_path, "two")
    for name in ("train.txt", "val.txt", "test.txt", "split.json"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()
    before = {p.name: p.read_bytes() for p in first.parent.iterdir()}
    _three_way(tmp_path, "one")
    assert {p.name: p.read_bytes() for p in first.parent.iterdir()} == before
    split_dataset(tmp_path / "a/data.yaml", first.parent, val=3)  # back to two-way: no stale test list stays
    assert sorted(p.name for p in first.parent.iterdir()) == ["data.yaml", "split.json", "train.txt", "val.txt"]
    assert "test" not in YAML.load(first)
    assert "test" not in json.loads((first.parent / "split.json").read_text())["splits"]


@pytest.mark.parametrize(("val", "test", "a", "b"), [(2, 1, (7, 2, 1), (17, 2, 1)), (0.2, 0.1, (7, 2, 1), (14, 4, 2))])
def test_split_counts_are_per_source(tmp_path: Path, val: Any, test: Any, a: tuple, b: tuple) -> None:
    """A count is per source, a fraction is of each source: a small source still gets its share of val and test."""
    sources = [_fake_dataset(tmp_path / "a", 10), _fake_dataset(tmp_path / "b", 20)]
    summary = json.loads((split_dataset(sources, tmp_path / "split", val=val, test=test).parent / "split.json")
                         .read_text())
    got = [tuple(summary["splits"][s]["per_source"][str(src)] for s in ("train", "val", "test")) for src in sources]
    assert got == [a, b]


def test_split_refuses_sources_with_different_names(tmp_path: Path) -> None:
    a, b = _fake_dataset(tmp_path / "a"), _fake_dataset(tmp_path / "b")
    YAML.save(b, {"path": ".", "train": "images", "val": "images", "names": {0: "person", 1: "truck"}})
    with pytest.raises(ValueError, match="different names") as err:
        split_dataset([a, b], tmp_path / "split", val=2, test=2)
    assert str(a) in str(err.value) and str(b) in str(err.value) and "truck" in str(err.value)
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("case", ["source twice", "unlabelled is labelled", "unlabelled twice"])
def test_split_refuses_an_image_in_two_sources(tmp_path: Path, case: str) -> None:
    a, b = _fake_dataset(tmp_path / "a"), _fake_dataset(tmp_path / "b")
    frames = _fake_unlabelled(tmp_path / "frames")
    data, unlabelled = {"source twice": ([a, b, a], [frames]), "unlabelled twice": ([a], [frames, frames]),
                        "unlabelled is labelled": ([a, b], [a.parent / "images"])}[case]
    with pytest.raises(ValueError, match="twice"):
        split_dataset(data, tmp_path / "split", val=2, test=2, unlabelled=unlabelled)
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("test", [0.01, -1, 1.0, 8, True])
def test_split_refuses_an_empty_or_bad_test(tmp_path: Path, test: Any) -> None:
    with pytest.raises(ValueError, match="test"):
        split_dataset(_fake_dataset(tmp_path / "src"), tmp_path / "split", val=2, test=test)
    assert not (tmp_path / "split").exists()


def test_split_cli_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from revperception.cli import main

    a, b = _fake_dataset(tmp_path / "a", 12), _fake_dataset(tmp_path / "b", 20)
    frames = _fake_unlabelled(tmp_path / "frames")
    args = ["split", "--data", str(a), "--data", str(b), "--unlabelled", str(frames), "--out", str(tmp_path / "split")]
    assert main([*args, "--val", "0.25", "--test", "0.25"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {tmp_path / 'split/data.yaml'}"
    assert out[1:] == [f"train     21  6 {a}, 10 {b}, 5 {frames}", f"val        8  3 {a}, 5 {b}, 0 {frames}",
                       f"test       8  3 {a}, 5 {b}, 0 {frames}"]
    assert main([*args, "--val", "3"]) == 0 and "test" not in YAML.load(tmp_path / "split/data.yaml")
    assert main([*args[:-2], "--out", str(tmp_path / "bad"), "--val", "0.25", "--test", "0.01"]) == 1
    assert "test" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_split_of_coco128_and_coco_extra_three_ways(tmp_path: Path, shared: SharedPath) -> None:
    coco128 = shared("data/coco128-train/data.yaml")
    extra = shared("data/coco-extra/data.yaml")
    frames = shared("data/coco-extra/images/unlabelled")
    before = sorted(p.relative_to(SHARED) for p in (SHARED / "data").rglob("*"))
    split = split_dataset([coco128, extra], tmp_path / "split", val=0.25, test=0.25, unlabelled=[frames])
    summary = json.loads((split.parent / "split.json").read_text())
    per_source = {s: list(part["per_source"].values()) for s, part in summary["splits"].items()}
    # coco128: 128 -> 32 test, 32 val, 64 train; coco-extra: 409 -> round(102.25) = 102 test, 102 val, 205 train
    assert per_source == {"train": [64, 205, 76], "val": [32, 102, 0], "test": [32, 102, 0]}
    lists = {s: _lines(split.parent / f"{s}.txt") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in lists.items()} == {"train": 345, "val": 134, "test": 134}
    every = [p for paths in lists.values() for p in paths]
    assert len({Path(p).name for p in every}) == len(every) == 128 + 409 + 76  # no image (by name) twice
    assert len(lists["val"]) >= 100 and len(lists["test"]) >= 100
    assert not {p for p in every if p.startswith(str(frames))} & set(lists["val"] + lists["test"])
    names = sorted(p.name for p in (coco128.parent / "images/train2017").glob("*.jpg"))
    in_coco128 = [Path(p).name for p in lists["test"] if p.startswith(str(coco128.parent))]
    assert in_coco128 == names[2::4]  # test first: every 4th image by name, from the third
    extra_held_out = [p for p in lists["val"] + lists["test"] if p.startswith(str(extra.parent))]
    assert all(Path(label).is_file() for label in img2label_paths(extra_held_out))  # (coco128 has 2 background images)
    assert YAML.load(split)["names"] == YAML.load(coco128)["names"] == YAML.load(extra)["names"]
    assert sorted(p.relative_to(SHARED) for p in (SHARED / "data").rglob("*")) == before


def _report() -> dict[str, Any]:
    front = {str(size): {"imgsz": size, "map50": m, "map50_95": m / 2, "params": 1872157, "flops": f,
                         "latency_ms": t} for size, m, f, t in ((320, 0.38, 1.1e9, 26.0), (448, 0.45, 2.2e9, 36.0),
                                                                (640, 0.49, 4.5e9, 58.0))}
    return {
        "settings": {"data": "split/data.yaml"}, "split": "test", "front": front,
        "levels": {"pruned": {"imgsz": 416, "map50": 0.40, "map50_95": 0.2, "params": 1381085, "flops": 1.7e9,
                              "latency_ms": 31.0},
                   "full": {"imgsz": 640, "map50": 0.49, "map50_95": 0.245, "params": 1872157, "flops": 4.5e9,
                            "latency_ms": 58.0}},
        "timing": {"total_s": 1234.5},
    }


def test_report_json_and_plot(tmp_path: Path) -> None:
    report = _report()
    write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "report.json").read_text().startswith('{\n  "front": {')  # sorted keys, indent 2
    path = plot_report(report, tmp_path / "plots", "yolov5n")
    assert path == tmp_path / "plots/yolov5n_map_vs_latency.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert cv2.imread(str(path)).shape[:2] == (540, 840)  # 7 x 4.5 in at 120 dpi
    write_report(report, tmp_path / "report.json")  # overwriting leaves no temp files either
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["plots", "report.json", path.name]


def test_the_table_sets_each_level_against_the_front_at_its_latency() -> None:
    report = _report()
    assert front_map50_at(report, 31.0) == pytest.approx(0.38 + 0.07 * 5 / 10)  # between 320 and 448 px
    assert front_map50_at(report, 20.0) is None and front_map50_at(report, 60.0) is None  # outside: unknown
    text = format_table(report)
    rows = {line.split()[1]: line.split() for line in text.splitlines()[2:] if line.split()[:1] == ["level"]}
    assert rows["pruned"][-1] == f"{0.40 - (0.38 + 0.035):+.3f}"  # below the front by 0.015
    assert rows["full"][-1] == "+0.000"
    assert "(mAP on the test split)" in text
    assert len({len(line) for line in text.splitlines()[:7]}) == 1  # columns aligned
    lines = markdown_table(report).splitlines()
    assert lines[0].startswith("| model | input px |") and set(lines[1]) == {"|", "-", ":"}
    assert len(lines) == 2 + 2 + 3 and all(line.count("|") == 9 for line in lines)
