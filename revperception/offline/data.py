"""Datasets for offline work: an honest train/val split of a dataset that validates on its training images."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from ultralytics.data.utils import IMG_FORMATS

from revperception.checkpoint import atomic_write_text
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


def split_dataset(
    data: str | Path, out_dir: str | Path, *, val: int | float = 0.25, source_split: str = "train",
) -> Path:
    """Split the images of `source_split` of `data` into disjoint train and val lists; returns the new data.yaml.

    For datasets such as coco128 whose train and val are the same images, so that validation stops
    measuring memorisation. The images are sorted by file name and `val` of them (a count, or a
    fraction of all images, rounded) are taken evenly spread: with n images and m for validation, the
    j-th validation image is image floor((j + 1/2) * n / m), counting from 0. That is every k-th image
    when k = n / m is whole (coco128 at 32 of 128: every 4th, images 2, 6, ..., 126); the rest train.
    `out_dir` gets train.txt and val.txt (absolute image paths: nothing is copied or linked, and
    Ultralytics finds each label by its images/ -> labels/ rule) and data.yaml (path: out_dir, train,
    val, and the source's names), each written atomically; the same inputs always give the same split.
    """
    cfg, entries = read_data(data, source_split)
    images = sorted(_image_files(entries), key=lambda f: (Path(f).name, f))
    if not images:
        raise ValueError(f"{data}: split {source_split!r} has no images")
    n = len(images)
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise ValueError(f"val must be a count (int) or a fraction (float in (0, 1)), got {val!r}")
    if isinstance(val, float) and not 0 < val < 1:
        raise ValueError(f"a fraction val must be in (0, 1), got {val}")
    m = int(val * n + 0.5) if isinstance(val, float) else val
    if not 0 < m < n:
        raise ValueError(f"val={val!r} gives {m} validation images of {n}: both train and val need at least one")

    val_index = {(2 * j + 1) * n // (2 * m) for j in range(m)}
    val_images = [f for i, f in enumerate(images) if i in val_index]
    train_images = [f for i, f in enumerate(images) if i not in val_index]
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train.txt", "".join(f"{f}\n" for f in train_images))
    atomic_write_text(out / "val.txt", "".join(f"{f}\n" for f in val_images))
    header = (f"# {len(train_images)} train / {len(val_images)} val images of {source_split!r} of "
              f"{Path(data).absolute()}, split by revperception.offline.data.split_dataset\n")
    body = {"path": str(out), "train": "train.txt", "val": "val.txt", "names": cfg["names"]}
    atomic_write_text(out / "data.yaml", header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return out / "data.yaml"
