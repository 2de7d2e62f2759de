"""Which filters matter: per-group channel importance, via Torch-Pruning's group criteria.

L1 is the paper's choice; L2 and Taylor (needs gradients from a backward pass) are options. Scores
aggregate every coupled tensor of the group, so a channel is judged by everything it feeds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp

RANKINGS = ("l1", "l2", "taylor")


def _criterion(method: str) -> tp.importance.Importance:
    if method == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if method == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown ranking {method!r}; choose from {', '.join(RANKINGS)}")


@torch.no_grad()
def rank_channels(tp_groups: list[Any], method: str = "l1") -> list[torch.Tensor]:
    """Per group, channel indices from most to least important (stable, so ties keep channel order)."""
    criterion = _criterion(method)
    orders = []
    for group in tp_groups:
        if method == "taylor" and any(
            p.grad is None for item in group.items for p in item.dep.target.module.parameters(recurse=False)
        ):
            raise ValueError("taylor ranking needs gradients: run a backward pass on a loss first")
        scores = criterion(group)
        orders.append(torch.sort(scores.float().cpu(), descending=True, stable=True).indices)
    return orders
