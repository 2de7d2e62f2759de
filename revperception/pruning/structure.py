"""Coupled channel groups from Torch-Pruning's dependency graph, and the prefix permutation.

A group is a set of channels that must be pruned together: a conv's filters, its BatchNorm, the
input channels of every consumer, residual partners in C3 bottlenecks, and the slices of concats and
SPPF that carry them. Each member records where the group's channels sit in one tensor dimension:
channel r of the group is index `offset + r` for every offset (SPPF concatenates the same channels
four times, so it has four offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

Kind = Literal["out", "in"]


@dataclass(frozen=True)
class Member:
    """One tensor dimension that carries a group's channels: a module's outputs or inputs."""

    module: str  # qualified module name, e.g. "model.2.cv1.conv"
    kind: Kind  # "out": conv filters / BatchNorm channels; "in": conv input channels
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels pruned together; `size` is the full architecture's channel count."""

    name: str  # the root conv producing the channels
    size: int
    members: tuple[Member, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size,
                "members": [[m.module, m.kind, list(m.offsets)] for m in self.members]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelGroup:
        members = tuple(Member(module, kind, tuple(offsets)) for module, kind, offsets in data["members"])
        return cls(name=data["name"], size=int(data["size"]), members=members)


def detection_outputs(model: nn.Module) -> list[nn.Module]:
    """The head's final convs (bare Conv2d, not inside a Conv+BN block): their outputs are never pruned."""
    head = model.model[-1]
    blocks = [m for m in head.modules() if hasattr(m, "bn") and isinstance(getattr(m, "conv", None), nn.Conv2d)]
    inside_blocks = {id(m.conv) for m in blocks}
    return [m for m in head.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside_blocks]


def _member(name: str, module: nn.Module, item: Any, size: int, graph: tp.DependencyGraph) -> Member:
    """A Torch-Pruning group item as a Member; refuses mappings a prefix cannot express."""
    # BatchNorm's in- and out-channel pruning are one function: Torch-Pruning counts it as out, as Member does.
    kind: Kind = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(f"{name}: grouped/depthwise convs are not supported by prefix pruning")
    by_offset: dict[int, set[int]] = {}
    for idx, root in zip(item.idxs, item.root_idxs, strict=True):
        by_offset.setdefault(idx - root, set()).add(root)
    if any(roots != set(range(size)) for roots in by_offset.values()):
        raise ValueError(f"{name}: channels are not a shifted copy of the group's channels")
    return Member(name, kind, tuple(sorted(by_offset)))


def _trace(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning traces through autograd: enable it, and gradients on every parameter, for the trace only."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("channel groups cannot be traced under torch.inference_mode(): autograd is off")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(True)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def find_groups(
    model: nn.Module, example_input: torch.Tensor, ignored: list[nn.Module] | None = None
) -> tuple[list[ChannelGroup], list[Any]]:
    """Coupled channel groups of every prunable conv, with the Torch-Pruning groups they came from.

    The detection outputs are always ignored. Returns (groups, tp_groups) in the same order; the
    Torch-Pruning groups are what importance criteria consume.
    """
    ignored = detection_outputs(model) + list(ignored or [])
    graph = _trace(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    groups, tp_groups = [], []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        root = tp_group[0].dep.target.module
        size = root.out_channels
        members = []
        for item in tp_group.items:
            module = item.dep.target.module
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                members.append(_member(names[module], module, item, size, graph))
            elif any(True for _ in module.parameters(recurse=False)):
                raise ValueError(f"{names[module]} ({type(module).__name__}) carries pruned channels: unsupported")
        groups.append(ChannelGroup(names[root], size, tuple(sorted(set(members), key=lambda m: (m.module, m.kind)))))
        tp_groups.append(tp_group)
    if not groups:
        raise ValueError("no prunable channel groups found in this model")
    return groups, tp_groups


def _dims(module: nn.Module, kind: Kind) -> list[tuple[torch.Tensor, int]]:
    """The tensors (and dimension) that a member's channels index."""
    if isinstance(module, nn.BatchNorm2d):
        return [(t, 0) for t in (module.weight, module.bias, module.running_mean, module.running_var)]
    if kind == "in":
        return [(module.weight, 1)]
    return [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])


@torch.no_grad()
def permute_to_prefix(model: nn.Module, groups: list[ChannelGroup], orders: list[torch.Tensor]) -> None:
    """Reorder every group's channels in place so that position j holds old channel `order[j]`.

    Applied to producers and consumers alike, so the function is unchanged; afterwards a level that
    keeps the first k channels of the order keeps a prefix (per offset) of every tensor dimension.
    """
    modules = dict(model.named_modules())
    for group, order in zip(groups, orders, strict=True):
        if sorted(order.tolist()) != list(range(group.size)):
            raise ValueError(f"{group.name}: order is not a permutation of {group.size} channels")
        for member in group.members:
            for tensor, dim in _dims(modules[member.module], member.kind):
                for offset in member.offsets:
                    block = tensor.narrow(dim, offset, group.size)
                    block.copy_(block.index_select(dim, order))
