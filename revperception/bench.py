"""`revperception bench`: swap, load and inference timings of a reversible model, side by side in one run.

The baseline for a swap is what a user would do without reversible pruning: construct the full model
and load its weights from disk. Timings are medians of interleaved runs on this machine, batch 1.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from revperception.checkpoint import SUFFIX, atomic_write_text, load_reversible
from revperception.models import build_model, load_model
from revperception.pruning import FULL, PRUNED, encode_full, encode_level
from revperception.pruning.prune import PrunedModel, prune_to_levels
from revperception.runtime import ReversibleModel, fuse_batchnorms


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers (views count once)."""
    storages = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _flops(model: ReversibleModel, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@torch.inference_mode()
def measure_levels(pruned: PrunedModel, imgsz: int | None = None) -> dict[str, dict[str, int]]:
    """Parameters and FLOPs (batch 1, square input) each level runs; measured on a copy of the model."""
    model = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, fuse=False,
                            channels_last=False)
    x = torch.zeros(1, 3, imgsz or pruned.imgsz, imgsz or pruned.imgsz)
    stats = {}
    for level in pruned.levels.names:
        model.set_level(level)
        stats[level] = {"params": model.parameter_count(level), "flops": _flops(model, x)}
    return stats


@torch.inference_mode()
def level_latencies(pruned: PrunedModel, imgsz: int | None = None, runs: int = 5) -> dict[str, float]:
    """Median CPU latency (ms, batch 1, square input) of each level, interleaved, on a copy of the model."""
    model = ReversibleModel(copy.deepcopy(pruned.model).cpu(), pruned.groups, pruned.levels, start_level=FULL)
    x = torch.rand(1, 3, imgsz or pruned.imgsz, imgsz or pruned.imgsz)
    times: dict[str, list[float]] = {name: [] for name in pruned.levels.names}
    for repeat in range(runs + 1):
        for name in pruned.levels.names:
            model.set_level(name)
            elapsed = _median_ms(lambda: model(x), 1)
            if repeat:  # the first round builds oneDNN kernels for each shape
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def _disk_load_ms(pruned: PrunedModel, repeats: int) -> float:
    """Median time to build the full model and load its weights from a file: the paper's alternative."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.safetensors"
        save_file({k: v.contiguous() for k, v in pruned.model.state_dict().items()}, str(path))

        def load() -> None:
            build_model(pruned.arch).load_state_dict(load_file(str(path)), assign=True)

        load()  # first-touch costs (imports, page cache) are not the steady state a vehicle sees
        return _median_ms(load, repeats)


def run_bench(source: str, *, sparsity: float = 0.36, imgsz: int = 640, switches: int = 200, loads: int = 5,
              runs: int = 10) -> dict[str, Any]:
    """Measure a checkpoint, or a model pruned on the fly (no fine-tuning) to `sparsity` of its filters."""
    if source.endswith(SUFFIX):
        pruned = load_reversible(source)
    else:
        pruned = prune_to_levels(load_model(source), [sparsity], imgsz=imgsz)
    with torch.inference_mode():
        return _measure(pruned, source=source, sparsity=sparsity, imgsz=imgsz, switches=switches, loads=loads,
                        runs=runs)


def _measure(pruned: PrunedModel, *, source: str, sparsity: float, imgsz: int, switches: int, loads: int,
             runs: int) -> dict[str, Any]:
    disk_load_ms = _disk_load_ms(pruned, loads)
    stats = measure_levels(pruned, imgsz)
    dense = build_model(pruned.arch)
    dense.load_state_dict(pruned.model.state_dict())
    fuse_batchnorms(dense)
    dense = dense.to(memory_format=torch.channels_last)  # the same kernels the reversible model runs
    # Last: the reversible model takes over pruned.model (fuses and slices it in place).
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, fuse=True, start_level=FULL)
    x = torch.rand(1, 3, imgsz, imgsz)

    for level in (FULL, PRUNED):
        model.set_level(level)
        model(x)  # warm-up: oneDNN builds its kernels once per shape
    x_dense = x.contiguous(memory_format=torch.channels_last)
    dense(x_dense)
    full_ms, pruned_ms, dense_ms = [], [], []
    for _ in range(runs):  # interleaved, so both levels see the same machine state
        for level, sink in ((FULL, full_ms), (PRUNED, pruned_ms)):
            model.set_level(level)
            sink.append(_median_ms(lambda: model(x), 1))
        dense_ms.append(_median_ms(lambda: dense(x_dense), 1))

    swap_ns = []
    for i in range(switches):
        target = FULL if i % 2 else PRUNED
        start = time.perf_counter_ns()
        model.set_level(target)
        swap_ns.append(time.perf_counter_ns() - start)

    encodings = {"full": len(encode_full(pruned.groups))}
    encodings.update({name: len(encode_level(pruned.groups, pruned.levels.keep[name]))
                      for name in pruned.levels.names if name != FULL})
    swap_ms = statistics.median(swap_ns) / 1e6
    infer_full = statistics.median(full_ms)
    infer_pruned = statistics.median(pruned_ms)
    return {
        "source": source, "imgsz": imgsz, "levels": list(pruned.levels.names),
        "filter_fraction": pruned.info.get("filter_fractions", [sparsity])[0],
        "swap_ms": swap_ms, "swap_max_ms": max(swap_ns) / 1e6, "disk_load_ms": disk_load_ms,
        "swap_speedup_vs_disk": disk_load_ms / swap_ms,
        "infer_full_ms": infer_full, "infer_pruned_ms": infer_pruned, "infer_dense_ms": statistics.median(dense_ms),
        "swap_fraction_of_full_inference": swap_ms / infer_full,
        "latency_ratio": infer_pruned / infer_full,
        "params_full": stats[FULL]["params"], "params_pruned": stats[PRUNED]["params"],
        "param_sparsity": 1 - stats[PRUNED]["params"] / stats[FULL]["params"],
        "flops_full": stats[FULL]["flops"], "flops_pruned": stats[PRUNED]["flops"],
        "flops_ratio": stats[PRUNED]["flops"] / stats[FULL]["flops"],
        "encoding_bytes": sum(encodings.values()), "encoding_bytes_by_level": encodings,
        "structure_bytes": len(json.dumps([g.to_json() for g in pruned.groups], separators=(",", ":"))),
        "resident_bytes": _storage_bytes(model), "dense_bytes": _storage_bytes(dense),
        "resident_ratio": _storage_bytes(model) / _storage_bytes(dense),
        "threads": torch.get_num_threads(), "runs": runs, "switches": switches, "loads": loads,
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [
        ("swap (median)", f"{result['swap_ms'] * 1e3:.2f} us"),
        ("disk load of the full model", f"{result['disk_load_ms']:.1f} ms"),
        ("swap speed-up vs disk", f"{result['swap_speedup_vs_disk']:,.0f}x"),
        ("swap / one full inference", f"{result['swap_fraction_of_full_inference'] * 100:.4f} %"),
        ("inference full / pruned / dense", f"{result['infer_full_ms']:.1f} / {result['infer_pruned_ms']:.1f} / "
                                            f"{result['infer_dense_ms']:.1f} ms"),
        ("latency ratio (pruned/full)", f"{result['latency_ratio']:.3f}"),
        ("FLOP ratio", f"{result['flops_ratio']:.3f}"),
        ("params full / pruned", f"{result['params_full']:,} / {result['params_pruned']:,}"),
        ("parameter sparsity", f"{result['param_sparsity'] * 100:.1f} %"),
        ("encodings (all levels)", f"{result['encoding_bytes']} B (+ {result['structure_bytes']} B coupling map)"),
        ("resident / dense bytes", f"{result['resident_bytes']:,} / {result['dense_bytes']:,} "
                                   f"({result['resident_ratio']:.3f}x)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
