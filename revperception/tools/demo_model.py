"""`make demo-model`: the demo checkpoint from nothing, with the package's own tools and no download.

Synthetic road scenes (`tools.synthetic.write_dataset`) -> YOLOv5n trained from `yolov5n.yaml` by Ultralytics
-> the offline pipeline (`revperception prune`: allocate channels, train the pruned level's own state) -> one reversible
checkpoint plus a JSON report of the settings, the time of each phase and mAP50 on the held-out val scenes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUT = "models/demo-yolov5n.rvp.safetensors"
DEFAULT_WORK = "runs/demo-model"


@dataclass
class DemoSettings:
    """Sized so the whole run takes minutes on 2 CPU cores; the objects are simple enough for that."""

    train_images: int = 500
    val_images: int = 150
    seed: int = 0
    fogged: float = 0.3  # fraction of scenes seen through fog
    imgsz: int = 320
    epochs: int = 12
    close_mosaic: int = 4  # mosaic epochs first (more objects per batch), then the scenes as the drive shows them
    batch: int = 16
    workers: int = 2
    prune_sparsity: float = 0.4  # parameter sparsity of the pruned level
    prune_allocation: str = "params"
    prune_epochs: int = 5
    prune_lr: float = 1e-3


def train_dense(data: Path, work: Path, s: DemoSettings) -> tuple[Path, float]:
    """YOLOv5n from its YAML (fresh weights), trained by Ultralytics; returns best.pt and its val mAP50."""
    from ultralytics import YOLO

    model = YOLO("yolov5n.yaml")
    metrics = model.train(data=str(data), imgsz=s.imgsz, epochs=s.epochs, batch=s.batch, device="cpu",
                          workers=s.workers, plots=False, amp=False, project=str(work.resolve()), name="train",
                          exist_ok=True, seed=s.seed, deterministic=True, val=True, cache="ram",
                          warmup_epochs=1, close_mosaic=s.close_mosaic)
    return Path(model.trainer.best), float(metrics.box.map50)


def evaluate_levels(checkpoint: Path, data: Path, imgsz: int) -> dict[str, dict[str, float]]:
    """mAP of every level of the written checkpoint, through the runtime the node uses (as `revperception eval`)."""
    from revperception.checkpoint import load_reversible
    from revperception.offline.evaluate import evaluate
    from revperception.runtime import ReversibleModel

    pruned = load_reversible(checkpoint)
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, private=pruned.private)
    results = {}
    for level in pruned.levels.names:
        model.set_level(level)
        result = evaluate(model, data, imgsz=imgsz)
        results[level] = {"map50": result["map50"], "map50_95": result["map50_95"]}
    return results


def drive_detections(checkpoint: Path, every: int = 10) -> dict[str, dict[str, dict[str, int]]]:
    """Per level, objects labelled and detected (per class) on every `every`-th frame of the default drive,
    clear and fogged apart: a sanity check that the demo model sees what the demo drive shows."""
    from revperception.detector import ReversibleDetector
    from revperception.tools.synthetic import CLASSES, drive

    frames = [f for i, f in enumerate(drive()) if i % every == 0]
    detector = ReversibleDetector.from_checkpoint(checkpoint)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for level in detector.levels:
        detector.set_level(level)
        for weather in ("clear", "fog"):
            chosen = [f for f in frames if f.fogged == (weather == "fog")]
            found = Counter(name for f in chosen for name in detector.predict(f.image).class_names)
            labelled = Counter(CLASSES[int(k)] for f in chosen for k in f.labels[:, 0])
            out.setdefault(level, {})[weather] = {f"{name}_{what}": count[name] for name in CLASSES
                                                  for what, count in (("labelled", labelled), ("detected", found))}
    return out


def build_demo_model(out: Path, work: Path, s: DemoSettings) -> dict[str, Any]:
    """Every phase from nothing; the checkpoint and its JSON report land at `out` atomically."""
    import torch
    import ultralytics

    from revperception.io import atomic_write_bytes, atomic_write_text
    from revperception.offline.config import PruneConfig
    from revperception.offline.pipeline import run_pipeline
    from revperception.tools.synthetic import write_dataset

    timing: dict[str, float] = {}
    start = time.perf_counter()
    shutil.rmtree(work / "data", ignore_errors=True)  # from nothing: no scene of an earlier, larger run survives
    data = write_dataset(work / "data", train=s.train_images, val=s.val_images, seed=s.seed, fogged=s.fogged)
    timing["dataset_s"] = time.perf_counter() - start

    mark = time.perf_counter()
    best, ultralytics_map50 = train_dense(data, work, s)
    timing["train_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    staged = work / "prune" / out.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    cfg = PruneConfig(weights=str(best), data=str(data), out=str(staged), imgsz=s.imgsz, batch=s.batch,
                      sparsity=s.prune_sparsity, allocation=s.prune_allocation, epochs=s.prune_epochs,
                      lr=s.prune_lr, workers=s.workers, seed=s.seed, front=[s.imgsz])
    prune_report = run_pipeline(cfg)
    timing["prune_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    levels = evaluate_levels(staged, data, s.imgsz)
    detections = drive_detections(staged)
    timing["check_s"] = time.perf_counter() - mark
    timing["total_s"] = time.perf_counter() - start

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, staged.read_bytes())
    params = {name: lv["params"] for name, lv in prune_report["levels"].items()}
    report = {
        "checkpoint": out.name, "checkpoint_bytes": out.stat().st_size, "settings": asdict(s),
        "dataset": {"train": s.train_images, "val": s.val_images, "seed": s.seed, "fogged_fraction": s.fogged,
                    "val_held_out": "disjoint seed stream"},
        "map50_val": {"dense_ultralytics": ultralytics_map50, **{name: lv["map50"] for name, lv in levels.items()}},
        "map50_95_val": {name: lv["map50_95"] for name, lv in levels.items()},
        "param_sparsity": 1 - params["pruned"] / params["full"], "params": params,
        "pruning": prune_report, "drive_detections": detections,
        "timing_s": {k: round(v, 1) for k, v in timing.items()},
        "versions": {"torch": torch.__version__, "ultralytics": ultralytics.__version__,
                     "python": sys.version.split()[0]},
    }
    atomic_write_text(report_path(out), json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def report_path(checkpoint: Path) -> Path:
    """models/demo-yolov5n.rvp.safetensors -> models/demo-yolov5n.json"""
    return checkpoint.with_name(checkpoint.name.removesuffix(".rvp.safetensors") + ".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="checkpoint to write")
    parser.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="dataset, training and pruning runs")
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs, help="Ultralytics training epochs")
    parser.add_argument("--train", type=int, default=DemoSettings.train_images, help="training scenes")
    parser.add_argument("--val", type=int, default=DemoSettings.val_images, help="held-out val scenes")
    args = parser.parse_args(argv)
    report = build_demo_model(args.out, args.work, DemoSettings(train_images=args.train, val_images=args.val,
                                                                epochs=args.epochs))
    print(json.dumps({k: report[k] for k in ("map50_val", "param_sparsity", "checkpoint_bytes", "timing_s")},
                     indent=2))
    print(f"wrote {args.out} and {report_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
