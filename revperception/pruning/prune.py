"""Prune a dense model into nested levels on its own weights (no data, no training).

This is the paper's no-fine-tuning baseline and what the offline pipeline starts from: rank filters,
plan nested keep counts, permute channels once so every level is a prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from revperception.models import LoadedModel
from revperception.pruning.levels import Levels, plan_levels
from revperception.pruning.ranking import rank_channels
from revperception.pruning.structure import ChannelGroup, find_groups, permute_to_prefix


@dataclass
class PrunedModel:
    """A dense network, channel-permuted, with the nested levels it can run: what a checkpoint holds."""

    model: nn.Module
    names: dict[int, str]
    stride: int
    imgsz: int
    arch: dict[str, Any]
    groups: list[ChannelGroup]
    levels: Levels
    info: dict[str, Any]  # provenance and measured metrics, stored in the checkpoint header
    # per level, the state it owns (BatchNorm terms, head biases) by state-dict name; the full level owns none
    private: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def prune_to_levels(
    loaded: LoadedModel, fractions: Sequence[float], *, ranking: str = "l1", round_to: int = 16, imgsz: int = 640,
    level_imgsz: Sequence[int] = (),
) -> PrunedModel:
    """Rank every group's filters on the given weights and build levels pruning `fractions` of them; pruned levels
    run at `level_imgsz` (smallest level first) when given."""
    model = loaded.model.eval()
    groups, tp_groups = find_groups(model, torch.zeros(1, 3, 2 * loaded.stride, 2 * loaded.stride))
    orders = rank_channels(tp_groups, ranking)
    permute_to_prefix(model, groups, orders)
    levels = plan_levels(groups, fractions, round_to)
    if level_imgsz:
        if len(level_imgsz) != len(levels.names) - 1:
            raise ValueError(f"give one input size per pruned level ({len(levels.names) - 1}), got {list(level_imgsz)}")
        levels = replace(levels, imgsz=dict(zip(levels.names, level_imgsz, strict=False)))
    info = {"source": loaded.source, "ranking": ranking, "filter_fractions": sorted(fractions, reverse=True),
            "round_to": round_to, "finetune": "none"}
    return PrunedModel(model=model, names=loaded.names, stride=loaded.stride, imgsz=imgsz, arch=loaded.arch,
                       groups=groups, levels=levels, info=info)
