"""Judging a pruning run on images no choice has seen, beside the obvious alternative.

Every level's accuracy on the test split at its input size, the dense model's at every size of the resolution
front, the FLOPs and parameters of each, and their latencies interleaved in one run; and how far the full level
is from the dense model it must equal.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from revperception.measure import measure_levels, time_interleaved
from revperception.offline.evaluate import evaluate, read_data
from revperception.offline.state import PipelineState
from revperception.pruning import FULL
from revperception.pruning.prune import PrunedModel
from revperception.runtime import ReversibleModel, fuse_batchnorms


def report_split(data: str) -> str:
    """`test` when the data has one (figures nobody chose on), else `val` (and the report says so)."""
    try:
        read_data(data, "test")
    except ValueError:
        return "val"
    return "test"


@torch.no_grad()
def full_deviation(pruned: PrunedModel, dense: torch.nn.Module, imgsz: int, device: torch.device) -> float:
    """Largest deviation of the full level from `dense` on a random image, as torch.testing measures it with
    atol = rtol (channel permutation reorders sums, so it is rounding, not zero)."""
    exact = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, private=pruned.private,
                            fuse=False, start_level=FULL, device=device)  # the same arithmetic as dense
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    out = dense(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float(((exact(x) - out).abs() / (1 + out.abs())).max())


def judge(state: PipelineState, pruned: PrunedModel) -> None:
    """Fill `state.report` with the accuracy, FLOPs, parameters and latency of every level and front size."""
    cfg, report = state.cfg, state.report
    split = report_split(cfg.data)
    report["split"] = split
    dense = copy.deepcopy(state.teacher).eval()
    report["full_deviation"] = full_deviation(pruned, dense, cfg.imgsz, state.device)
    reversible = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels,
                                 private=pruned.private, start_level=FULL, device=state.device)
    for name in pruned.levels.names:
        reversible.set_level(name)
        result = evaluate(reversible, cfg.data, imgsz=state.sizes[name], split=split, device=state.device)
        report["levels"].setdefault(name, {"imgsz": state.sizes[name]}).update(
            map50=result["map50"], map50_95=result["map50_95"])
    stats = {size: measure_levels(pruned, size) for size in {*state.sizes.values(), *cfg.front}}
    for size in cfg.front:
        result = evaluate(dense, cfg.data, imgsz=size, split=split, device=state.device)
        report["front"][str(size)] = {"imgsz": size, "map50": result["map50"], "map50_95": result["map50_95"],
                                      "flops": stats[size][FULL]["flops"], "params": stats[size][FULL]["params"]}
    for name in pruned.levels.names:
        report["levels"][name].update(flops=stats[state.sizes[name]][name]["flops"],
                                      params=stats[state.sizes[name]][name]["params"])
    latencies = latency(state, pruned)
    for name in pruned.levels.names:
        report["levels"][name]["latency_ms"] = latencies[f"level:{name}"]
    for size in cfg.front:
        report["front"][str(size)]["latency_ms"] = latencies[f"front:{size}"]
    report["threads"] = torch.get_num_threads()


def latency(state: PipelineState, pruned: PrunedModel) -> dict[str, float]:
    """Median batch-1 CPU ms of every level at its size (`level:<name>`) and of the dense model at every front
    size (`front:<size>`), all interleaved in one run so the machine's drift weighs on each alike."""
    dense = copy.deepcopy(state.teacher).cpu().eval()
    fuse_batchnorms(dense)
    dense = dense.to(memory_format=torch.channels_last)  # the kernels the reversible model runs
    reversible = ReversibleModel(copy.deepcopy(pruned.model).cpu(), pruned.groups, pruned.levels,
                                 private=pruned.private, start_level=FULL)

    def level(name: str) -> Callable[[], object]:
        x, index = torch.rand(1, 3, state.sizes[name], state.sizes[name]), pruned.levels.index(name)
        return lambda: reversible.run(x, index)

    def front(size: int) -> Callable[[], object]:
        x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
        return lambda: dense(x)

    runs = {**{f"level:{n}": level(n) for n in pruned.levels.names},
            **{f"front:{s}": front(s) for s in state.cfg.front}}
    with torch.inference_mode():
        return time_interleaved(runs, state.cfg.latency_runs)
