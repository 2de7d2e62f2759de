"""Which channels a level drops: where the network's outputs change least per unit of cost saved.

Label-free: each group's next block of channels is zeroed in turn and scored by how far the head's outputs on a
few training images move from the dense model's (the distillation distance), per parameter it frees (default)
or per FLOP (`ConvFlops`); a lazy greedy takes the cheapest block until the level's goal is met. Within a group
the ranking (L1) decides which channels go. Pruning the same fraction of every group instead spends the
accuracy of a model as small as YOLOv5n on a few groups it cannot spare.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import torch
from torch import nn

from revperception.offline.masks import ChannelMasks


def used_parameters(masks: ChannelMasks, model: nn.Module, keep: Sequence[torch.Tensor]) -> int:
    """Parameter entries the architecture `keep` uses."""
    used = masks.parameter_masks(keep)
    return sum(int(used[p].expand_as(p).sum()) if p in used else p.numel() for p in model.parameters())


class ConvFlops:
    """Multiply-accumulates of an architecture's convs at one input size: what a channel block saves in compute.

    Each conv's output size is recorded once on the dense model; an architecture's cost is then, per conv, the
    weight entries it uses times its output positions, so scoring a candidate runs no network.
    """

    def __init__(self, model: nn.Module, masks: ChannelMasks, imgsz: int) -> None:
        self.masks = masks
        self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        positions: dict[nn.Conv2d, int] = {}
        hooks = [c.register_forward_hook(lambda m, _i, out: positions.__setitem__(m, out.shape[2] * out.shape[3]))
                 for c in self.convs]
        try:
            with torch.no_grad():
                was_training = model.training
                model.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
                model.train(was_training)
        finally:
            for hook in hooks:
                hook.remove()
        self.positions = [positions[c] for c in self.convs]

    def __call__(self, keep: Sequence[torch.Tensor]) -> int:
        used = self.masks.parameter_masks(keep)
        return sum((int(used[c.weight].expand_as(c.weight).sum()) if c.weight in used else c.weight.numel()) * n
                   for c, n in zip(self.convs, self.positions, strict=True))


class SensitivityAllocation:
    """Picks, step by step, the channel blocks whose removal changes the outputs least per unit of cost saved.

    `distance(model)` is the damage measure: how far the model's outputs on a fixed calibration batch lie
    from the dense model's (`head_distance`, the distillation's; no labels). `cost(keep)` is what an
    architecture costs (parameters by default; `ConvFlops` for compute). Each candidate is scored by zeroing
    its block in place and restoring it: no copy of the model.
    """

    def __init__(self, model: nn.Module, masks: ChannelMasks, distance: Callable[[nn.Module], float],
                 round_to: int, cost: Callable[[Sequence[torch.Tensor]], int] | None = None) -> None:
        self.model, self.masks, self.distance, self.round_to = model, masks, distance, round_to
        self.cost = cost or (lambda keep: used_parameters(masks, model, keep))

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
        """(damage added per unit of cost saved, the candidate's damage)."""
        damage = self._damage(candidate)
        freed = used - self.cost(candidate)
        return (damage - base) / max(freed, 1), damage

    def prune_until(self, alive: Sequence[torch.Tensor], orders: Sequence[torch.Tensor],
                    done: Callable[[list[torch.Tensor]], bool]) -> list[torch.Tensor]:
        """The channels left once `done(alive)` holds (or every group is at its floor), pruning the cheapest
        block at a time.

        Lazy greedy: the cheapest block is rescored against the current architecture before it is taken (earlier
        picks change its cost) and taken only if it is still the cheapest; then that group's next block is
        scored. One forward pass per group to start, about two per block taken.
        """
        alive = [a.clone() for a in alive]
        used, base = self.cost(alive), self._damage(alive)
        heap = []
        for index, order in enumerate(orders):
            if (candidate := self._candidate(alive, order, index)) is not None:
                heapq.heappush(heap, (self._score(candidate, base, used)[0], index))
        while not done(alive) and heap:
            _, index = heapq.heappop(heap)
            candidate = self._candidate(alive, orders[index], index)
            score, damage = self._score(candidate, base, used)
            if heap and score > heap[0][0]:
                heapq.heappush(heap, (score, index))  # no longer the cheapest: back in line at its new cost
                continue
            alive, base = candidate, damage
            used = self.cost(alive)
            if (candidate := self._candidate(alive, orders[index], index)) is not None:
                heapq.heappush(heap, (self._score(candidate, base, used)[0], index))
        return alive
