"""Measurements shared by `bench`, `bench-node` and the offline pipeline's report: interleaved medians, FLOPs,
parameters and bytes. Timings are batch 1 on this machine; interleaving lets its drift weigh on each alike."""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from revperception.pruning.prune import PrunedModel
from revperception.runtime import ReversibleModel


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each callable over `repeats` rounds that run every callable once in turn, so the machine's
    drift weighs on each alike; one untimed round first (oneDNN builds its kernels once per shape)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats + 1):
        for name, fn in runs.items():
            elapsed = median_ms(fn, 1)
            if repeat:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers (views count once)."""
    storages = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def built(build: Callable[[], Any]) -> tuple[Any, float, int]:
    """What `build` returns, the ms it took and the resident bytes it added."""
    gc.collect()
    before, start = resident_bytes(), time.perf_counter()
    result = build()
    return result, (time.perf_counter() - start) * 1e3, resident_bytes() - before


def level_sizes(pruned: PrunedModel, imgsz: int | None = None) -> dict[str, int]:
    """Each level's input size: its own (or the checkpoint's), or `imgsz` for all when given."""
    return {name: imgsz or pruned.levels.size(name, pruned.imgsz) for name in pruned.levels.names}


@torch.inference_mode()
def measure_levels(pruned: PrunedModel, imgsz: int | None = None) -> dict[str, dict[str, int]]:
    """Parameters and FLOPs (batch 1, square input) each level runs at its input size (or `imgsz`); measured on
    a copy of the model."""
    model = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, fuse=False,
                            channels_last=False, private=pruned.private)
    stats = {}
    for level, size in level_sizes(pruned, imgsz).items():
        model.set_level(level)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size))
        stats[level] = {"params": model.parameter_count(level), "flops": counter.get_total_flops(), "imgsz": size}
    return stats
