"""What `revperception prune` takes: one dataclass that the pipeline reads and the CLI is generated from.

It imports nothing heavy, so `revperception --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ALLOCATIONS = ("params", "flops")
FRONT = (320, 384, 416, 448, 480, 512, 576, 640)  # the dense model's input sizes the levels are judged against


def _opt(default: Any, text: str, **extra: Any) -> Any:
    """A PruneConfig field with the help text (and choices) its command-line option is generated from."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": text, **extra})


@dataclass
class PruneConfig:
    """Everything `revperception prune` takes: the CLI is generated from these fields; stored in the report."""

    weights: str = _opt(None, "model YAML, Ultralytics .pt or YOLOv5 release .pt", required=True)
    data: str = _opt(None, "data.yaml: train (labels optional), val (every choice), test (the report's figures)",
                     required=True)
    out: str = _opt(None, "the checkpoint to write (*.rvp.safetensors); report and plot beside it", required=True)
    sparsity: float = _opt(0.3, "parameter sparsity of the `pruned` level")
    levels: int = _opt(1, "pruned levels below full, nested; intermediate ones evenly spaced in sparsity")
    imgsz: int = _opt(640, "the full level's input size")
    level_imgsz: list[int] = _opt(list, "input size of each pruned level, smallest level first (default: --imgsz)")
    allocation: str = _opt("params", "which channels go: least output damage per parameter saved, or per FLOP saved",
                           choices=ALLOCATIONS)
    calibration: int = _opt(32, "training images each allocation candidate's damage is measured on")
    round_to: int = _opt(8, "kept channels are whole blocks of this many")
    epochs: int = _opt(10, "most epochs of training each level's own state")
    patience: int = _opt(3, "stop a level's training after this many epochs without a validation gain")
    lr: float = _opt(1e-3, "Adam learning rate of the levels' own BatchNorm terms and biases")
    batch: int = _opt(8, "training batch size")
    front: list[int] = _opt(lambda: list(FRONT), "the dense model's input sizes judged beside the levels")
    latency_runs: int = _opt(10, "interleaved timed passes per level and front size")
    device: str = _opt("cpu", "cpu or cuda")
    workers: int = _opt(0, "data loader processes")
    seed: int = _opt(0, "seeds torch's, numpy's and python's generators: the same seed draws the same batches")

    def __post_init__(self) -> None:
        missing = [f.name for f in fields(self) if f.metadata.get("required") and getattr(self, f.name) is None]
        if missing:
            raise ValueError(f"PruneConfig needs {', '.join(missing)}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r}; choose from {', '.join(ALLOCATIONS)}")
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity}")
        if self.levels < 1:
            raise ValueError(f"levels must be at least 1, got {self.levels}")
        if self.level_imgsz and len(self.level_imgsz) != self.levels:
            raise ValueError(f"give one input size per pruned level ({self.levels}), got {self.level_imgsz}")
        if not str(self.out).endswith(".rvp.safetensors"):
            raise ValueError(f"the checkpoint's name must end in .rvp.safetensors, got {self.out}")
