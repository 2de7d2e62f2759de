"""The distillation distance a level's own state is trained on: the dense model is the teacher, no labels needed.

It matches the head's training outputs of the student to those of the original dense model, the model the
node reverts to, so users can train on their own unlabelled camera frames; it works for every family, the
anchor-based release head included. It is objectness-scaled (`head_distance`): confidence is matched
everywhere, boxes and classes only where the teacher sees an object, in proportion to its confidence. Plain
squared error on the raw outputs spends the training on background logits that no threshold ever sees.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)


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


# Box errors in the anchor head's sigmoid space are about a tenth of the confidence divergences; this gain
# brings them level (measured: docs/experiment-log.md, Losses).
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
