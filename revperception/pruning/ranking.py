"""Which filters matter: per-group channel importance, via Torch-Pruning's group criteria.

L1 is the paper's choice, L2 the other magnitude norm. Scores aggregate every coupled tensor of the group,
so a channel is judged by everything it feeds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp

NORMS = {"l1": 1, "l2": 2}
RANKINGS = tuple(NORMS)


@torch.no_grad()
def rank_channels(tp_groups: list[Any], method: str = "l1") -> list[torch.Tensor]:
    """Per group, channel indices from most to least important (stable, so ties keep channel order)."""
    if method not in NORMS:
        raise ValueError(f"unknown ranking {method!r}; choose from {', '.join(RANKINGS)}")
    criterion = tp.importance.GroupMagnitudeImportance(p=NORMS[method])
    orders = []
    for group in tp_groups:
        scores = criterion(group)
        orders.append(torch.sort(scores.float().cpu(), descending=True, stable=True).indices)
    return orders
