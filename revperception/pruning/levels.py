"""Nested pruning levels and their encodings.

A level keeps, per channel group, the first k channels of the ranking (after `permute_to_prefix`, a
prefix). Levels are nested by construction: a smaller level's k never exceeds a larger level's.
Encodings follow the paper's Algorithm 2: one for the full architecture and, per level, only what
differs from it; with prefix levels that is a (group, k) pair per pruned group: 4 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from revperception.pruning.structure import ChannelGroup

FULL = "full"
PRUNED = "pruned"


@dataclass(frozen=True)
class Levels:
    """Level names from smallest to full, per level the channels kept in each group, and the input size of the
    levels that run at their own (a smaller input is the cheapest latency a level can buy)."""

    names: tuple[str, ...]
    keep: dict[str, tuple[int, ...]]
    imgsz: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.names[-1] != FULL or self.names[0] != PRUNED or len(set(self.names)) != len(self.names):
            raise ValueError(f"levels must run from {PRUNED!r} to {FULL!r} with unique names, got {self.names}")
        for smaller, larger in zip(self.names, self.names[1:], strict=False):
            if any(a > b for a, b in zip(self.keep[smaller], self.keep[larger], strict=True)):
                raise ValueError(f"level {smaller!r} is not nested in {larger!r}")
        for name, size in self.imgsz.items():
            if name not in self.keep or not (isinstance(size, int) and size > 0):
                raise ValueError(f"input size {size!r} for level {name!r}: levels are {self.names}, sizes positive")

    def index(self, name: str) -> int:
        if name not in self.keep:
            raise KeyError(f"unknown level {name!r}; this model has {', '.join(self.names)}")
        return self.names.index(name)

    def size(self, name: str, default: int) -> int:
        """The input size level `name` runs at: its own, or `default` (the model's)."""
        return self.imgsz.get(name, default)

    def to_json(self) -> dict[str, list[int]]:
        return {name: list(self.keep[name]) for name in self.names}

    @classmethod
    def from_json(cls, data: dict[str, list[int]], names: Sequence[str], imgsz: dict[str, int] | None = None) -> Levels:
        return cls(names=tuple(names), keep={name: tuple(int(k) for k in data[name]) for name in names},
                   imgsz=dict(imgsz or {}))


def level_names(count: int) -> tuple[str, ...]:
    """`count` pruned levels and full, smallest first: `pruned`, `level1`, ... `level{count-1}`, `full`."""
    return (PRUNED, *(f"level{i}" for i in range(1, count)), FULL)


def kept_channels(size: int, fraction: float, round_to: int = 1) -> int:
    """Channels left when `fraction` of `size` filters are pruned, rounded to the nearest multiple of `round_to`.

    CPU kernels (oneDNN on AVX-512) run channel blocks of 16: a multiple of 16 is markedly faster per FLOP
    than the exact count. Never fewer than one block (or one channel), never more than `size`.
    """
    keep = size - size * fraction
    return min(size, max(min(round_to, size), 1, round(keep / round_to) * round_to))


def plan_levels(groups: Sequence[ChannelGroup], fractions: Sequence[float], round_to: int = 1) -> Levels:
    """Levels that prune each filter fraction uniformly per group; the largest fraction is `pruned`.

    Intermediate levels are named `level1`, `level2`, ... from smaller to larger.
    """
    if not fractions or any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"filter fractions must lie in (0, 1), got {list(fractions)}")
    ordered = sorted(set(fractions), reverse=True)
    names = level_names(len(ordered))
    keep = {
        name: tuple(kept_channels(g.size, f, round_to) for g in groups)
        for name, f in zip(names[:-1], ordered, strict=True)
    }
    keep[FULL] = tuple(g.size for g in groups)
    return Levels(names=names, keep=keep)


def encode_full(groups: Sequence[ChannelGroup]) -> bytes:
    """The full architecture's channel counts: a count, then uint16 per group."""
    return struct.pack(f"<H{len(groups)}H", len(groups), *(g.size for g in groups))


def encode_level(groups: Sequence[ChannelGroup], keep: Sequence[int]) -> bytes:
    """Only the groups a level changes: (uint16 group index, uint16 kept channels) each."""
    changed = [(i, k) for i, (g, k) in enumerate(zip(groups, keep, strict=True)) if k != g.size]
    return b"".join(struct.pack("<HH", i, k) for i, k in changed)


def encodings(groups: Sequence[ChannelGroup], levels: Levels) -> dict[str, bytes]:
    """Every level's encoding by name: the full architecture whole (first), each other level as its difference."""
    return {FULL: encode_full(groups), **{name: encode_level(groups, levels.keep[name])
                                          for name in levels.names if name != FULL}}
