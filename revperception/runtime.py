"""ReversibleDetector: one set of shared weights, several nested architectures, switched in place.

After `permute_to_prefix`, every level keeps a prefix of each conv's filters (and, per concat
segment, of its inputs). So each prunable Conv2d/BatchNorm2d is replaced by a sliced twin that holds
the same Parameters and, per level, views of them: switching a level is one integer assignment, read
once at the start of each forward pass. Nothing is copied, re-allocated or loaded; a switch requested
during an inference takes effect at the next one, and no pass can see two levels.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

from revperception.checkpoint import load_reversible
from revperception.models import Detections, Detector
from revperception.pruning import FULL, PRUNED, ChannelGroup, Levels

Run = tuple[int, int]  # (start, length) along one tensor dimension


class _LevelState:
    """The level index the running forward pass uses; shared by every sliced module of one model."""

    def __init__(self) -> None:
        self.current = 0


def _runs(spans: list[Run]) -> tuple[Run, ...]:
    """Sorted spans with adjacent ones merged, so a full dimension is a single run."""
    merged: list[list[int]] = []
    for start, length in sorted(s for s in spans if s[1] > 0):
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1][1] += length
        else:
            merged.append([start, length])
    return tuple((s, n) for s, n in merged)


def _take(tensor: torch.Tensor, dim: int, runs: tuple[Run, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A view for one run; for several (a concat consumer), the views to join at call time."""
    if len(runs) == 1:
        return tensor.narrow(dim, *runs[0])
    return tuple(tensor.narrow(dim, s, n) for s, n in runs)


class SlicedConv2d(nn.Module):
    """A Conv2d whose filters and input channels are a per-level slice of the shared weight."""

    def __init__(self, conv: nn.Conv2d, out_runs: Sequence[tuple[Run, ...]], in_runs: Sequence[tuple[Run, ...]],
                 state: _LevelState) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self._state = state
        self._plans = []
        for out, inp in zip(out_runs, in_runs, strict=True):
            (o_start, o_len), = out
            weight = _take(self.weight.narrow(0, o_start, o_len), 1, inp)
            bias = None if self.bias is None else self.bias.narrow(0, o_start, o_len)
            self._plans.append((weight, bias))

    def parameter_count(self, index: int) -> int:
        weight, bias = self._plans[index]
        parts = weight if isinstance(weight, tuple) else (weight,)
        return sum(t.numel() for t in parts) + (0 if bias is None else bias.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._plans[self._state.current]
        if isinstance(weight, tuple):
            weight = torch.cat(weight, dim=1)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)


class SlicedBatchNorm2d(nn.Module):
    """An inference BatchNorm2d over a per-level prefix of its channels."""

    def __init__(self, bn: nn.BatchNorm2d, runs: Sequence[tuple[Run, ...]], state: _LevelState) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self._state = state
        self._plans = [
            tuple(t.narrow(0, *run) for t in (self.running_mean, self.running_var, self.weight, self.bias))
            for (run,) in runs
        ]

    def parameter_count(self, index: int) -> int:
        _, _, weight, bias = self._plans[index]
        return weight.numel() + bias.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, weight, bias = self._plans[self._state.current]
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)


@torch.no_grad()
def fuse_batchnorms(model: nn.Module) -> None:
    """Fold each Conv block's BatchNorm into its conv, in place (the conv weight keeps its storage)."""
    for block in model.modules():
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias += conv.bias * scale
            conv.bias = nn.Parameter(bias, requires_grad=False)
            block.bn = nn.Identity()


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class ReversibleModel(nn.Module):
    """A detection network that runs any of its nested levels on one set of weights.

    It takes over `model`: BatchNorms are folded and prunable layers replaced in place, so the caller's
    module becomes the reversible one (no copy of the weights is ever made).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], levels: Levels, *, fuse: bool = True,
                 channels_last: bool = True, start_level: str = PRUNED, device: str | torch.device = "cpu") -> None:
        super().__init__()
        model.to(device)  # before any view is taken: views must point at the weights that will run
        if fuse:
            fuse_batchnorms(model)
        self.channels_last = channels_last
        if channels_last:  # oneDNN runs NHWC without reordering every activation to its blocked layout and back
            for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        self.model = model.eval()
        self.levels = levels
        self._state = _LevelState()
        self._requested = levels.index(start_level)
        self._lock = threading.Lock()
        modules = dict(model.named_modules())
        spans: dict[tuple[str, str], list[list[Run]]] = {}
        for g, group in enumerate(groups):
            for member in group.members:
                per_level = spans.setdefault((member.module, member.kind), [[] for _ in levels.names])
                for i, name in enumerate(levels.names):
                    per_level[i].extend((offset, levels.keep[name][g]) for offset in member.offsets)
        for name in sorted({module for module, _ in spans}):
            module = modules[name]
            if isinstance(module, nn.Conv2d):
                whole_out = [((0, module.out_channels),)] * len(levels.names)  # detection outputs
                whole_in = [((0, module.in_channels),)] * len(levels.names)  # the image
                out = [_runs(s) for s in spans[(name, "out")]] if (name, "out") in spans else whole_out
                inp = [_runs(s) for s in spans[(name, "in")]] if (name, "in") in spans else whole_in
                _replace(model, name, SlicedConv2d(module, out, inp, self._state))
            elif isinstance(module, nn.BatchNorm2d):
                _replace(model, name, SlicedBatchNorm2d(module, [_runs(s) for s in spans[(name, "out")]],
                                                        self._state))

    def parameter_count(self, name: str) -> int:
        """Parameters a level actually uses: its slices of the sliced modules plus every other parameter."""
        index = self.levels.index(name)
        count = 0
        for module in self.model.modules():
            if isinstance(module, (SlicedConv2d, SlicedBatchNorm2d)):
                count += module.parameter_count(index)
            else:
                count += sum(p.numel() for p in module.parameters(recurse=False))
        return count

    @property
    def level(self) -> str:
        """The level the next forward pass will run."""
        return self.levels.names[self._requested]

    def set_level(self, name: str) -> None:
        """Switch architecture: one assignment, no I/O, no allocation; effective from the next pass."""
        self._requested = self.levels.index(name)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """One forward pass at the requested level; returns the raw head output and that level's name."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:  # passes are serialised, so the level a pass reads cannot change under it
            self._state.current = index = self._requested
            out = self.model(x)
        return (out[0] if isinstance(out, (tuple, list)) else out), self.levels.names[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


class ReversibleDetector:
    """Image in, detections out, at whichever nested level is active; `reverse()` toggles pruned/full."""

    def __init__(self, model: ReversibleModel, names: dict[int, str], *, stride: int = 32, imgsz: int = 640,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 300, classes: list[int] | None = None) -> None:
        self.model = model
        device = next(model.parameters()).device  # the model was built on its device; moving it would orphan views
        self.detector = Detector(model, names, stride=stride, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                                 classes=classes, device=device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, fuse: bool = True, start_level: str = PRUNED,
                        device: str | torch.device = "cpu", **options) -> ReversibleDetector:
        """Load and verify a `*.rvp.safetensors` checkpoint (no pickle) and build the reversible model."""
        loaded = load_reversible(path)
        model = ReversibleModel(loaded.model, loaded.groups, loaded.levels, fuse=fuse, start_level=start_level,
                                device=device)
        options.setdefault("imgsz", loaded.imgsz)
        return cls(model, loaded.names, stride=loaded.stride, **options)

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
        x = self.detector.preprocess(image, bgr=bgr)
        raw, level = self.model.run(x)
        return replace(self.detector.postprocess(raw, tuple(x.shape[2:]), image.shape[:2]), level=level)
