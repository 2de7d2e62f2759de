"""Channel masks as the parametrisation of pruned fine-tuning.

A channel set per group (which filters are alive) becomes, for every parameter it touches, an
elementwise mask: a conv weight entry is used when both its filter and its input channel are alive.
Pruned entries are set to exactly zero and their gradients are masked, so with an optimiser without
weight decay (Adam here) they never move; the dense model with those zeros computes exactly what the
sliced runtime computes for that level (SiLU(0) = 0 feeds nothing downstream).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from revperception.pruning import ChannelGroup


class ChannelMasks:
    """Maps per-group channel keep-vectors onto the parameters of one model."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        self.groups = list(groups)
        modules = dict(model.named_modules())
        self._members = [[(modules[m.module], m.kind, m.offsets) for m in g.members] for g in self.groups]
        self._modules = {id(mod): mod for members in self._members for mod, _, _ in members}

    def full(self) -> list[torch.Tensor]:
        """Every channel alive: the dense architecture."""
        return [torch.ones(g.size, dtype=torch.bool) for g in self.groups]

    def parameter_masks(self, keep: Sequence[torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
        """Per parameter of every affected module, the entries the architecture `keep` uses."""
        dims: dict[tuple[int, str], torch.Tensor] = {}
        for group, alive, members in zip(self.groups, keep, self._members, strict=True):
            for module, kind, offsets in members:
                if isinstance(module, nn.BatchNorm2d):
                    size = module.num_features
                else:
                    size = module.out_channels if kind == "out" else module.in_channels
                mask = dims.setdefault((id(module), kind), torch.ones(size, dtype=torch.bool))
                for offset in offsets:
                    mask[offset:offset + group.size] = alive
        masks: dict[nn.Parameter, torch.Tensor] = {}
        for key, module in self._modules.items():
            out = dims.get((key, "out"))
            if isinstance(module, nn.Conv2d):
                inp = dims.get((key, "in"))
                out = torch.ones(module.out_channels, dtype=torch.bool) if out is None else out
                inp = torch.ones(module.in_channels, dtype=torch.bool) if inp is None else inp
                masks[module.weight] = out[:, None, None, None] & inp[None, :, None, None]
                if module.bias is not None:
                    masks[module.bias] = out.clone()
            elif isinstance(module, nn.BatchNorm2d):
                masks[module.weight] = out.clone()
                masks[module.bias] = out.clone()
        return masks

    @torch.no_grad()
    def zero_pruned(self, keep: Sequence[torch.Tensor]) -> None:
        """Silence everything the architecture `keep` does not use: filters, inputs, BatchNorm scale and shift."""
        for param, mask in self.parameter_masks(keep).items():
            param.mul_(mask.to(param.device, param.dtype).expand_as(param))


@contextmanager
def trainable_only(model: nn.Module, masks: dict[nn.Parameter, torch.Tensor]) -> Iterator[list[nn.Parameter]]:
    """Within the block, gradients reach only the masked-in entries of `masks` (all other parameters frozen).

    Yields the parameters to optimise. Parameters outside `masks` are frozen too: the caller names every
    entry that may move.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    hooks = []
    try:
        for p in model.parameters():
            p.requires_grad_(p in masks and bool(masks[p].any()))
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            mask = masks[p].to(p.device, p.dtype).expand_as(p).contiguous()
            hooks.append(p.register_hook(lambda grad, mask=mask: grad * mask))
        yield params
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
