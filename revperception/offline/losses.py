"""Fine-tuning losses: distillation from the dense teacher (default, label-free) or the detection loss.

Distillation matches the head's training outputs of the student to those of the original dense model, the
model the node reverts to. It needs no labels, so users can fine-tune on their own camera frames, and it
works for every family, the anchor-based release head included. It is objectness-scaled (`head_distance`):
confidence is matched everywhere, boxes and classes only where the teacher sees an object, in proportion to
its confidence. Plain squared error on the raw outputs spends the fine-tune on background logits that no
threshold ever sees (YOLOv5n's objectness logits sit near -12), and on 96 COCO images did not lift a pruned
YOLOv5n at all. With a feature weight it also matches every block's output map (feature mimicking).

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


def _bernoulli_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(teacher || student) between Bernoulli distributions given as logits: zero where they agree."""
    p = teacher.sigmoid()
    return (F.binary_cross_entropy_with_logits(student, p, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher, p, reduction="none"))


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight * values).sum() / weight.sum().clamp_min(1e-6)


# Box errors in the anchor head's sigmoid space are about a tenth of the confidence divergences; this gain is
# the one measured (YOLOv5n, 30 % sparsity, 96 COCO images: mAP50 0.37 -> 0.44 in 30 epochs).
BOX_GAIN = 10.0


def head_distance(out: Any, target: list[torch.Tensor]) -> torch.Tensor:
    """Objectness-scaled distillation distance between a head's training outputs and the teacher's.

    Anchor head (per scale: ..., 4 box + objectness + classes): objectness divergence over every cell; class
    divergence and box error (sigmoid space) weighted by the teacher's objectness. Ultralytics' anchor-free head
    (box distributions, class logits): class divergence over every cell, the box distributions' divergence
    weighted by the teacher's highest class confidence.
    """
    student = raw_outputs(out)
    if isinstance(out, dict):
        (s_box, s_cls), (t_box, t_cls) = student, target
        weight = t_cls.sigmoid().amax(1, keepdim=True)  # (B, 1, anchors)
        cls = _bernoulli_kl(s_cls, t_cls).sum(1).mean()
        b, channels, n = s_box.shape
        if channels == 4:  # one bin per side: plain regression
            box = _weighted_mean((s_box - t_box).pow(2), weight)
        else:
            s_dist = s_box.view(b, 4, -1, n).log_softmax(2)
            t_dist = t_box.view(b, 4, -1, n).log_softmax(2)
            kl = F.kl_div(s_dist, t_dist, log_target=True, reduction="none").sum(2)  # (B, 4, anchors)
            box = _weighted_mean(kl, weight)
        return cls + box
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, target, strict=True):
        weight = t[..., 4:5].sigmoid()
        obj = _bernoulli_kl(s[..., 4], t[..., 4]).mean()
        cls = _weighted_mean(_bernoulli_kl(s[..., 5:], t[..., 5:]), weight)
        box = _weighted_mean((s[..., :4].sigmoid() - t[..., :4].sigmoid()).pow(2), weight)
        total = total + obj + cls + BOX_GAIN * box
    return total


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
    """`head_distance` between student and teacher outputs on the same images, plus `feature_weight` x the
    blocks' relative feature error.

    The teacher's outputs for the latest batch are kept: a step that trains two architectures on one batch
    (the pruned and the full one) runs the teacher once.
    """
    latest: dict[str, Any] = {}

    def loss(forward: Forward, images: torch.Tensor, _: dict[str, torch.Tensor]) -> torch.Tensor:
        if latest.get("images") is not images:
            with torch.no_grad(), block_outputs(teacher) as maps:
                latest.update(images=images, target=raw_outputs(teacher(images)), maps=maps)
        if not feature_weight:
            return head_distance(forward(images), latest["target"])
        with block_outputs(student) as maps:
            out = forward(images)
        return head_distance(out, latest["target"]) + feature_weight * feature_distance(maps, latest["maps"])

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
