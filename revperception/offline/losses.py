"""Fine-tuning losses: distillation from the dense teacher (default, label-free) or the detection loss.

Distillation matches the head's raw training outputs of the student to those of the original dense
model, the model the node reverts to. It needs no labels, so users can fine-tune on their own camera
frames, and it works for every family, the anchor-based release head included. With a feature weight it
also matches every block's output map (feature mimicking): on a few hundred images, a target for each
block is far denser supervision than the head's outputs alone.

A loss runs the forward pass itself (`loss(forward, images, batch)`), so it can observe the blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import v8DetectionLoss

LOSSES = ("distill", "detect")
Forward = Callable[[torch.Tensor], Any]
Loss = Callable[[Forward, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The head's raw training outputs as tensors: Ultralytics' dict (box and class logits), or per-scale maps."""
    if isinstance(out, dict):
        return [out["boxes"], out["scores"]]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def output_distance(out: Any, target: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error between a model's raw head outputs and the teacher's (`raw_outputs` of them)."""
    return sum(F.mse_loss(s, t) for s, t in zip(raw_outputs(out), target, strict=True))


@contextmanager
def block_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, the output maps of the model's blocks with weights (not the head), in forward order."""
    maps: list[torch.Tensor] = []
    blocks = [m for m in model.model[:-1] if any(True for _ in m.parameters())]
    handles = [b.register_forward_hook(lambda _m, _i, out: maps.append(out)) for b in blocks]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def feature_distance(maps: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Per block, the mean squared error relative to the teacher map's mean square; averaged over blocks,
    so every block counts alike whatever its scale."""
    terms = [F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-6) for s, t in zip(maps, target, strict=True)]
    return sum(terms) / len(terms)


def distillation(teacher: nn.Module, student: nn.Module, feature_weight: float = 0.0) -> Loss:
    """Mean squared error between student and teacher raw head outputs on the same images, plus
    `feature_weight` x the blocks' relative feature error.

    The teacher's outputs for the latest batch are kept: a step that trains two architectures on one batch
    (the pruned and the full one) runs the teacher once.
    """
    latest: dict[str, Any] = {}

    def loss(forward: Forward, images: torch.Tensor, _: dict[str, torch.Tensor]) -> torch.Tensor:
        if latest.get("images") is not images:
            with torch.no_grad(), block_outputs(teacher) as maps:
                latest.update(images=images, target=raw_outputs(teacher(images)), maps=maps)
        if not feature_weight:
            return output_distance(forward(images), latest["target"])
        with block_outputs(student) as maps:
            out = forward(images)
        return output_distance(out, latest["target"]) + feature_weight * feature_distance(maps, latest["maps"])

    return loss


def detection(model: nn.Module) -> Loss:
    """Ultralytics' own detection loss (box, class, DFL), with its default gains; needs labels."""
    if getattr(model.model[-1], "reg_max", None) is None:
        raise ValueError("--loss detect needs an anchor-free Ultralytics head; use --loss distill for release models")
    model.args = get_cfg(DEFAULT_CFG)
    criterion = v8DetectionLoss(model)

    def loss(forward: Forward, images: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        total, _ = criterion(forward(images), batch)
        return total.sum()

    return loss


def make_loss(name: str, model: nn.Module, teacher: nn.Module, feature_weight: float = 0.0) -> Loss:
    if name == "distill":
        return distillation(teacher, model, feature_weight)
    if name == "detect":
        return detection(model)
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
