"""Datasets for offline work: honest, deterministic train/val(/test) splits over one or more sources."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from ultralytics.data.utils import IMG_FORMATS

from revperception.io import atomic_write_text
from revperception.offline.evaluate import read_data


def _image_files(entries: list[str]) -> list[str]:
    """Absolute image paths of a split's entries (image dirs, searched recursively, or .txt lists), as Ultralytics
    reads them; a relative line of a .txt list is taken from the list's folder."""
    files: list[str] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            files += [str(p) for p in entry.rglob("*.*") if p.is_file()]
        elif entry.is_file():
            lines = (line.strip() for line in entry.read_text(encoding="utf-8-sig").splitlines())
            files += [str(entry.parent / line) for line in lines if line]  # `/` keeps absolute lines as they are
        else:
            raise FileNotFoundError(f"no such image dir or list: {entry}")
    return [os.path.abspath(f) for f in files if f.rpartition(".")[2].lower() in IMG_FORMATS]


_SPLITS = ("train", "val", "test")
_RULE = ("per labelled source: images sorted by (file name, path); test = images (2j+1)*n//(2m) of the n, "
         "counting from 0; val = the same rule among the rest; the rest and every unlabelled image train")


def _amount(name: str, value: int | float, *, optional: bool) -> None:
    """Refuse a split size that is neither a count nor a fraction: a typo must not silently move images."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a count (int) or a fraction (float in (0, 1)), got {value!r}")
    if isinstance(value, float) and not (0 < value < 1 or (optional and value == 0)):
        raise ValueError(f"a fraction {name} must be in {'[0' if optional else '(0'}, 1), got {value}")
    if isinstance(value, int) and value < (0 if optional else 1):
        raise ValueError(f"a count {name} must be at least {0 if optional else 1}, got {value}")


def _count(value: int | float, n: int) -> int:
    """A split size per source: a count as it is, a fraction of the source's n images rounded half up."""
    return int(value * n + 0.5) if isinstance(value, float) else value


def _spread(images: list[str], m: int) -> tuple[list[str], list[str]]:
    """The m images picked evenly spread (index (2j+1)*n // (2m), j = 0..m-1) and the rest, both in order."""
    n = len(images)
    picked = {(2 * j + 1) * n // (2 * m) for j in range(m)}
    return [f for i, f in enumerate(images) if i in picked], [f for i, f in enumerate(images) if i not in picked]


def _sorted_images(entries: list[str]) -> list[str]:
    """Image paths in the split rule's order: by file name, then path, so that moving a dataset keeps its split."""
    return sorted(_image_files(entries), key=lambda f: (Path(f).name, f))


def _split_source(
    source: str | Path, *, val: int | float, test: int | float, source_split: str,
) -> tuple[dict[Any, Any], dict[str, list[str]]]:
    """One labelled source's names and its images per split, by the rule in split_dataset's docstring."""
    cfg, entries = read_data(source, source_split)
    images = _sorted_images(entries)
    if not images:
        raise ValueError(f"{source}: split {source_split!r} has no images")
    n = len(images)
    m_test, m_val = _count(test, n), _count(val, n)
    if m_val < 1 or (test and m_test < 1) or m_test + m_val >= n:
        sides = "train, val and test each need" if test else "both train and val need"
        raise ValueError(f"{source}: val={val!r}, test={test!r} give {n - m_test - m_val} train / {m_val} val / "
                         f"{m_test} test of {n} images: {sides} at least one per source")
    test_images, rest = _spread(images, m_test)
    val_images, train_images = _spread(rest, m_val)
    return cfg["names"], {"train": train_images, "val": val_images, "test": test_images}


def _first_difference(a: dict[Any, Any], b: dict[Any, Any]) -> str:
    """Where two `names` maps first disagree, for an error a person can act on."""
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            return f"class {key}: {a.get(key)!r} vs {b.get(key)!r}"
    return "same classes, different order"


def _refuse_duplicates(parts: list[tuple[str, str, dict[str, list[str]]]]) -> None:
    """An image (by real path) in two sources, or twice in one, would sit in two splits or count twice."""
    owner: dict[str, int] = {}  # real path -> index of the part that holds it
    for index, (label, _, part) in enumerate(parts):
        for image in (f for split in _SPLITS for f in part[split]):
            key = os.path.realpath(image)
            if key in owner:
                other = parts[owner[key]][0]
                where = (f"twice in {label}" if owner[key] == index else
                         f"in {label}, given twice" if other == label else f"in both {other} and {label}")
                raise ValueError(f"image {image} is {where}: a split must not hold one image twice")
            owner[key] = index


def split_dataset(
    data: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    val: int | float = 0.25,
    test: int | float = 0,
    unlabelled: Sequence[str | Path] = (),
    source_split: str = "train",
) -> Path:
    """Split labelled sources into disjoint train, val (and test) lists, unlabelled images to train; returns data.yaml.

    For datasets such as coco128 whose train and val are the same images, so that validation stops measuring
    memorisation, and for pooling several sources without any of them missing from, or dominating, val or test.

    The rule, applied to each labelled source (`data`: one data.yaml or several; its `source_split`) on its own,
    so that every source is represented in every split in proportion to its size:
      1. its n images are sorted by (file name, path);
      2. m_test = `test` of them (a count per source, or a fraction of the n rounded half up; 0, the default,
         means no test split and the old two-way split) are taken evenly spread: the j-th picked image is image
         (2j + 1) * n // (2m), counting from 0 (every k-th image from the (k // 2)-th when k = n / m is whole:
         coco128 at 32 of 128 gives images 2, 6, ..., 126);
      3. m_val = `val` of the n (same meaning) are then picked by the same rule among the n - m_test left;
      4. the rest train.
    Every image of `unlabelled` (image folders, searched recursively, or .txt lists) trains, for label-free
    distillation: Ultralytics finds no label for them, so supervised training would read them as background.

    Refused with a ValueError before anything is written: labelled sources whose `names` differ, an image (same
    real path) in two sources or twice in one, a source without images, and a val, a test (when asked for) or a
    train that comes out empty for some source. `out_dir` gets train.txt, val.txt, test.txt (only when test is
    asked for; a stale one is removed), split.json (counts per split and per source, and each list's sha256, so
    a report can cite the split) and data.yaml (path, train, val, test, names; the counts in a comment header),
    each written atomically, data.yaml last. Lists hold absolute image paths, labelled sources in the order
    given, then the unlabelled ones: nothing is copied or linked, and Ultralytics finds each label by its
    images/ -> labels/ rule. The same inputs always give the same files.
    """
    _amount("val", val, optional=False)
    _amount("test", test, optional=True)
    sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not sources:
        raise ValueError("no labelled source (data.yaml) to split")
    names: dict[Any, Any] = {}
    parts: list[tuple[str, str, dict[str, list[str]]]] = []  # (source, kind, images per split)
    for source in sources:
        label = os.path.abspath(source)
        source_names, part = _split_source(source, val=val, test=test, source_split=source_split)
        if parts and source_names != names:
            raise ValueError(f"{parts[0][0]} and {label} have different names "
                             f"({_first_difference(names, source_names)}): sources must share one class list")
        names = names or source_names
        parts.append((label, "labelled", part))
    for folder in unlabelled:
        images = _sorted_images([str(folder)])
        if not images:
            raise ValueError(f"unlabelled {folder} has no images")
        parts.append((os.path.abspath(folder), "unlabelled", {"train": images, "val": [], "test": []}))
    _refuse_duplicates(parts)
    _write_split(Path(out_dir).absolute(), parts, names, {"val": val, "test": test, "source_split": source_split})
    return Path(out_dir).absolute() / "data.yaml"


def _write_split(
    out: Path, parts: list[tuple[str, str, dict[str, list[str]]]], names: dict[Any, Any], settings: dict[str, Any],
) -> None:
    """The checked split's files, each atomic; data.yaml last, so that whoever finds it finds its lists."""
    splits = list(_SPLITS) if settings["test"] else ["train", "val"]
    texts = {split: "".join(f"{f}\n" for _, _, part in parts for f in part[split]) for split in splits}
    counts = {split: sum(len(part[split]) for _, _, part in parts) for split in splits}
    summary = {
        "by": "revperception.offline.data.split_dataset", "rule": _RULE, **settings,
        "sources": [{"path": label, "kind": kind, "images": sum(map(len, part.values()))}
                    for label, kind, part in parts],
        "splits": {split: {"file": f"{split}.txt", "images": counts[split],
                           "sha256": hashlib.sha256(texts[split].encode("utf-8")).hexdigest(),
                           "per_source": {label: len(part[split]) for label, _, part in parts}} for split in splits},
    }
    header = [" / ".join(f"{counts[s]} {s}" for s in splits)
              + " images, split by revperception.offline.data.split_dataset (counts: split.json)"]
    for label, kind, part in parts:
        where = f"{settings['source_split']!r} of {label}" if kind == "labelled" else f"unlabelled {label} (train only)"
        header.append(f"  {where}, {sum(map(len, part.values()))} images: "
                      + " / ".join(f"{len(part[s])} {s}" for s in splits))
    body = {"path": str(out), **{split: f"{split}.txt" for split in splits}, "names": names}

    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        atomic_write_text(out / f"{split}.txt", texts[split])
    if "test" not in splits:
        (out / "test.txt").unlink(missing_ok=True)  # from an earlier three-way split: the lists must match split.json
    atomic_write_text(out / "split.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "data.yaml", "".join(f"# {line}\n" for line in header)
                      + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
