"""The detector the node runs: a checkpoint's levels on the chosen backend (`build_levels`, the one place a
backend is chosen), under letterbox and NMS, switched in place (`ReversibleDetector`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from revperception.checkpoint import load_reversible
from revperception.compiled import CompiledLevels
from revperception.models import Detections, Detector
from revperception.precision import FP32
from revperception.pruning import FULL, PRUNED
from revperception.pruning.prune import PrunedModel
from revperception.runtime import BACKENDS, TORCH, LevelRunner, ReversibleModel


def build_levels(pruned: PrunedModel, *, backend: str = TORCH, precision: str = FP32,
                 device: str | torch.device = "cpu", start_level: str = PRUNED, sizes: dict[str, int] | None = None,
                 fuse: bool = True) -> LevelRunner:
    """The levels of `pruned` on `backend`: torch takes over `pruned.model` (one set of shared weights);
    openvino compiles each level once, at `sizes` (default: each level's own), from a copy of its channels."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == TORCH:
        return ReversibleModel(pruned.model, pruned.groups, pruned.levels, fuse=fuse, start_level=start_level,
                               device=device, private=pruned.private, precision=precision)
    sizes = sizes or {name: pruned.levels.size(name, pruned.imgsz) for name in pruned.levels.names}
    reversible = ReversibleModel(pruned.model, pruned.groups, pruned.levels, channels_last=False,
                                 private=pruned.private)
    return CompiledLevels(reversible, [sizes[name] for name in pruned.levels.names], precision=precision,
                          device=str(device), start_level=start_level)


class ReversibleDetector:
    """Image in, detections out, at whichever nested level is active; `reverse()` toggles pruned/full.

    Each level runs at its input size (`sizes`); `imgsz`, when given, runs every level at that size instead.
    """

    def __init__(self, model: LevelRunner, names: dict[int, str], *, stride: int = 32, imgsz: int | None = None,
                 sizes: dict[str, int] | None = None, conf: float = 0.25, iou: float = 0.45, max_det: int = 300,
                 classes: list[int] | None = None) -> None:
        self.model = model
        # a torch model was built on its device (moving it would orphan views); OpenVINO takes numpy from the CPU
        device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
        default = imgsz or 640
        self.sizes = tuple(imgsz or (sizes or {}).get(name, default) for name in model.levels.names)
        self.detector = Detector(model, names, stride=stride, imgsz=self.sizes[-1], conf=conf, iou=iou,
                                 max_det=max_det, classes=classes, device=device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, fuse: bool = True, start_level: str = PRUNED,
                        device: str | torch.device = "cpu", backend: str = TORCH, precision: str = FP32,
                        imgsz: int | None = None, **options) -> ReversibleDetector:
        """Load and verify a `*.rvp.safetensors` checkpoint (no pickle) and build its levels on `backend`
        (torch: one set of shared weights; openvino: each level compiled once, here)."""
        loaded = load_reversible(path)
        sizes = {name: imgsz or loaded.levels.size(name, loaded.imgsz) for name in loaded.levels.names}
        model = build_levels(loaded, backend=backend, precision=precision, device=device, start_level=start_level,
                             sizes=sizes, fuse=fuse)
        return cls(model, loaded.names, stride=loaded.stride, sizes=sizes, **options)

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def precision(self) -> str:
        """The precision the levels run at (`auto` resolved)."""
        return self.model.precision

    @property
    def levels(self) -> tuple[str, ...]:
        return self.model.levels.names

    @property
    def level(self) -> str:
        return self.model.level

    def set_level(self, name: str) -> None:
        self.model.set_level(name)

    def reverse(self) -> str:
        """Toggle between the pruned and the full architecture; returns the level now requested."""
        self.set_level(PRUNED if self.level == FULL else FULL)
        return self.level

    def warm_up(self, shape: tuple[int, int] = (480, 640)) -> None:
        """One pass per level on a blank frame: oneDNN builds its kernels on the first pass of each shape,
        which would otherwise make the first real frame (or the first one after a switch) seconds late."""
        requested = self.level
        blank = np.zeros((*shape, 3), np.uint8)
        for name in self.levels:
            self.set_level(name)
            self.predict(blank)
        self.set_level(requested)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, *, bgr: bool = True) -> Detections:
        index = self.model.requested()  # read once: the input size and the architecture come from one level
        x = self.detector.preprocess(image, bgr=bgr, imgsz=self.sizes[index])
        raw, level = self.model.run(x, index)
        return replace(self.detector.postprocess(raw, tuple(x.shape[2:]), image.shape[:2]), level=level)
