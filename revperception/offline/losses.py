"""Fine-tuning losses: distillation from the dense teacher (default, label-free) or the detection loss.

Distillation matches the head's raw training outputs of the student to those of the original dense
model, the model the node reverts to. It needs no labels, so users can fine-tune on their own camera
frames, and it works for every family, the anchor-based release head included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import v8DetectionLoss

LOSSES = ("distill", "detect")
Loss = Callable[[Any, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The head's raw training outputs as tensors: Ultralytics' dict (box and class logits), or per-scale maps."""
    if isinstance(out, dict):
        return [out["boxes"], out["scores"]]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def distillation(teacher: nn.Module) -> Loss:
    """Mean squared error between student and teacher raw head outputs on the same images."""

    def loss(out: Any, _: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = raw_outputs(teacher(images))
        return sum(F.mse_loss(s, t) for s, t in zip(raw_outputs(out), target, strict=True))

    return loss


def detection(model: nn.Module) -> Loss:
    """Ultralytics' own detection loss (box, class, DFL), with its default gains; needs labels."""
    if getattr(model.model[-1], "reg_max", None) is None:
        raise ValueError("--loss detect needs an anchor-free Ultralytics head; use --loss distill for release models")
    model.args = get_cfg(DEFAULT_CFG)
    criterion = v8DetectionLoss(model)

    def loss(out: Any, batch: dict[str, torch.Tensor], _: torch.Tensor) -> torch.Tensor:
        total, _ = criterion(out, batch)
        return total.sum()

    return loss


def make_loss(name: str, model: nn.Module, teacher: nn.Module) -> Loss:
    if name == "distill":
        return distillation(teacher)
    if name == "detect":
        return detection(model)
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
