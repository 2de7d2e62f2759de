"""How many channels each group gives up in a down step: the same fraction everywhere, or where it costs least.

Uniform (the paper's rule) prunes the same fraction of every group. On a model as small as YOLOv5n that
spends the accuracy budget on a few groups it cannot spare (pruning 10 % of the first C3's residual stream
alone costs 0.36 mAP50 on coco128). Sensitivity allocation measures, without labels, how far each group's
next block of channels moves the network's raw outputs from the dense model's per parameter it frees, and
prunes the cheapest blocks until the step has freed its share of the model's parameters. Within a group
the ranking (L1 by default) still decides which channels go.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import torch
from torch import nn

from revperception.offline.masks import ChannelMasks
from revperception.pruning import ChannelGroup
from revperception.pruning.levels import kept_channels

ALLOCATIONS = ("uniform", "sensitivity")


def uniform_targets(groups: Sequence[ChannelGroup], fraction: float, round_to: int) -> list[int]:
    """Channels each group keeps when `fraction` of every group's original filters are pruned."""
    return [kept_channels(g.size, fraction, round_to) for g in groups]


def used_parameters(masks: ChannelMasks, model: nn.Module, keep: Sequence[torch.Tensor]) -> int:
    """Parameter entries the architecture `keep` uses."""
    used = masks.parameter_masks(keep)
    return sum(int(used[p].expand_as(p).sum()) if p in used else p.numel() for p in model.parameters())


class SensitivityAllocation:
    """Picks, step by step, the channel blocks whose removal changes the outputs least per parameter freed.

    `distance(model)` is the damage measure: how far the model's outputs on a fixed calibration batch lie
    from the dense model's (`head_distance`, the distillation's; no labels). Each candidate is scored by
    zeroing its block in place and restoring it: no copy of the model.
    """

    def __init__(self, model: nn.Module, masks: ChannelMasks, distance: Callable[[nn.Module], float],
                 round_to: int) -> None:
        self.model, self.masks, self.distance, self.round_to = model, masks, distance, round_to

    def _candidate(self, alive: list[torch.Tensor], order: torch.Tensor, index: int) -> list[torch.Tensor] | None:
        """`alive` with group `index`'s next block (its lowest-ranked live channels) pruned; None if at its floor."""
        group_alive = alive[index]
        count = int(group_alive.sum())
        floor = min(self.round_to, len(group_alive))
        block = count - max(floor, (count - 1) // self.round_to * self.round_to)  # down to a multiple of round_to
        if count <= floor or block <= 0:
            return None
        ranked = order[group_alive[order]]
        smaller = group_alive.clone()
        smaller[ranked[count - block:]] = False
        return [smaller if i == index else a for i, a in enumerate(alive)]

    @torch.no_grad()
    def _damage(self, keep: list[torch.Tensor]) -> float:
        """`distance` with `keep` applied, the model's weights restored afterwards."""
        saved = [(p, p.detach().clone()) for p in self.masks.parameter_masks(keep)]
        try:
            self.masks.zero_pruned(keep)
            return self.distance(self.model)
        finally:
            for p, value in saved:
                p.copy_(value)

    def _score(self, candidate: list[torch.Tensor], base: float, used: int) -> tuple[float, float]:
        """(damage added per parameter freed, the candidate's damage)."""
        damage = self._damage(candidate)
        freed = used - used_parameters(self.masks, self.model, candidate)
        return (damage - base) / max(freed, 1), damage

    def targets(self, alive: list[torch.Tensor], orders: Sequence[torch.Tensor], budget: int) -> list[int]:
        """Channels each group keeps once at least `budget` more parameter entries are freed (fewer only when
        every group is at its floor).

        Lazy greedy: the cheapest block is rescored against the current architecture before it is taken (earlier
        picks change its cost) and taken only if it is still the cheapest; then that group's next block is
        scored. One forward pass per group to start, about two per block taken.
        """
        alive = [a.clone() for a in alive]
        used = used_parameters(self.masks, self.model, alive)
        goal, base = used - budget, self._damage(alive)
        heap = []
        for index, order in enumerate(orders):
            if (candidate := self._candidate(alive, order, index)) is not None:
                heapq.heappush(heap, (self._score(candidate, base, used)[0], index))
        while used > goal and heap:
            _, index = heapq.heappop(heap)
            candidate = self._candidate(alive, orders[index], index)
            score, damage = self._score(candidate, base, used)
            if heap and score > heap[0][0]:
                heapq.heappush(heap, (score, index))  # no longer the cheapest: back in line at its new cost
                continue
            alive, base = candidate, damage
            used = used_parameters(self.masks, self.model, alive)
            if (candidate := self._candidate(alive, orders[index], index)) is not None:
                heapq.heappush(heap, (self._score(candidate, base, used)[0], index))
        return [int(a.sum()) for a in alive]
