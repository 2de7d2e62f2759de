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

from revperception.checkpoint import SUFFIX, load_reversible
from revperception.detector import build_levels
from revperception.export import BackendError, import_openvino, to_openvino
from revperception.io import atomic_write_text
from revperception.measure import built, level_sizes, measure_levels, median_ms, storage_bytes, time_interleaved
from revperception.models import build_model, load_model
from revperception.precision import FP32, resolve
from revperception.pruning import FULL, PRUNED, encodings
from revperception.pruning.prune import PrunedModel, prune_to_levels
from revperception.runtime import BACKENDS, TORCH, fuse_batchnorms, reduce_precision


def _disk_load_ms(pruned: PrunedModel, repeats: int) -> float:
    """Median time to build the full model and load its weights from a file: the paper's alternative."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.safetensors"
        save_file({k: v.contiguous() for k, v in pruned.model.state_dict().items()}, str(path))

        def load() -> None:
            build_model(pruned.arch).load_state_dict(load_file(str(path)), assign=True)

        load()  # first-touch costs (imports, page cache) are not the steady state a vehicle sees
        return median_ms(load, repeats)


def run_bench(source: str, *, sparsity: float = 0.36, imgsz: int | None = None, switches: int = 200,
              loads: int = 5, runs: int = 10, backend: str = TORCH, precision: str = FP32) -> dict[str, Any]:
    """Measure a checkpoint, or a model pruned on the fly (no fine-tuning) to `sparsity` of its filters, on
    `backend` at `precision`, beside the peer (the dense model through OpenVINO's default settings).

    Every level runs at its own input size unless `imgsz` is given (then all run at it)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if source.endswith(SUFFIX):
        pruned = load_reversible(source)
    else:
        pruned = prune_to_levels(load_model(source), [sparsity], imgsz=imgsz or 640)
    with torch.inference_mode():
        return _measure(pruned, source=source, sparsity=sparsity, imgsz=imgsz, switches=switches, loads=loads,
                        runs=runs, backend=backend, precision=precision)


def _peer(dense: torch.nn.Module, size: int) -> Callable[[], object] | None:
    """The dense model as a user following Ultralytics' export guide runs it: OpenVINO IR (fp32, static
    shape), compiled with OpenVINO's default settings; None without OpenVINO."""
    try:
        ov = import_openvino()
    except BackendError:
        return None
    compiled = ov.Core().compile_model(to_openvino(copy.deepcopy(dense), size, dynamic=False), "CPU")
    request = compiled.create_infer_request()
    x = torch.rand(1, 3, size, size).numpy()
    return lambda: request.infer({0: x})


def _measure(pruned: PrunedModel, *, source: str, sparsity: float, imgsz: int | None, switches: int, loads: int,
             runs: int, backend: str, precision: str) -> dict[str, Any]:
    disk_load_ms = _disk_load_ms(pruned, loads)
    stats = measure_levels(pruned, imgsz)
    sizes = level_sizes(pruned, imgsz)
    dense = build_model(pruned.arch)
    dense.load_state_dict(pruned.model.state_dict())
    peer = _peer(dense, sizes[FULL])
    fuse_batchnorms(dense)
    if backend == TORCH:
        model = build_levels(pruned, precision=precision, start_level=FULL)  # takes over pruned.model: built last
        reduce_precision(dense, model.dtype)
        dense = dense.to(memory_format=torch.channels_last)  # the kernels the levels run
        x_dense = torch.rand(1, 3, sizes[FULL], sizes[FULL]).to(model.dtype)
        x_dense = x_dense.contiguous(memory_format=torch.channels_last)
        run_dense = lambda: dense(x_dense)  # noqa: E731
        resident, dense_resident = storage_bytes(model), storage_bytes(dense)
        build_ms = disk_load_ms  # the alternative to a switch: build the full model and load it from disk
    else:
        from revperception.compiled import compile_network

        # what a switch spares: converting and compiling the full architecture
        compiled_dense, build_ms, dense_resident = built(lambda: compile_network(dense, sizes[FULL],
                                                                                  resolve(precision)))
        request = compiled_dense.create_infer_request()
        x_np = torch.rand(1, 3, sizes[FULL], sizes[FULL]).numpy()
        run_dense = lambda: request.infer({0: x_np})  # noqa: E731
        model, _, resident = built(lambda: build_levels(pruned, backend=backend, precision=precision,
                                                         start_level=FULL, sizes=sizes))

    def level(name: str) -> Callable[[], object]:
        x, index = torch.rand(1, 3, sizes[name], sizes[name]), pruned.levels.index(name)
        return lambda: model.run(x, index)

    timed = {**{name: level(name) for name in pruned.levels.names}, "dense": run_dense}
    if peer is not None:
        timed["peer"] = peer
    latency = time_interleaved(timed, runs)

    swap_ns = []
    for i in range(switches):
        target = FULL if i % 2 else PRUNED
        start = time.perf_counter_ns()
        model.set_level(target)
        swap_ns.append(time.perf_counter_ns() - start)

    sizes_bytes = {name: len(code) for name, code in encodings(pruned.groups, pruned.levels).items()}
    swap_ms = statistics.median(swap_ns) / 1e6
    infer_full, infer_pruned = latency[FULL], latency[PRUNED]
    per_level = {name: {**stats[name], "latency_ms": latency[name]} for name in pruned.levels.names}
    peer_ms = latency.get("peer")
    return {
        "source": source, "imgsz": sizes[FULL], "levels": list(pruned.levels.names), "per_level": per_level,
        "backend": backend, "precision": model.precision, "precision_asked": precision,
        "filter_fraction": pruned.info.get("filter_fractions", [sparsity])[0],
        "swap_ms": swap_ms, "swap_max_ms": max(swap_ns) / 1e6, "disk_load_ms": disk_load_ms,
        "swap_speedup_vs_disk": disk_load_ms / swap_ms,
        "build_ms": build_ms, "swap_speedup_vs_build": build_ms / swap_ms,
        "infer_full_ms": infer_full, "infer_pruned_ms": infer_pruned, "infer_dense_ms": latency["dense"],
        "peer_dense_ms": peer_ms,
        "pruned_over_peer": None if peer_ms is None else infer_pruned / peer_ms,
        "full_over_peer": None if peer_ms is None else infer_full / peer_ms,
        "swap_fraction_of_full_inference": swap_ms / infer_full,
        "latency_ratio": infer_pruned / infer_full,
        "params_full": stats[FULL]["params"], "params_pruned": stats[PRUNED]["params"],
        "param_sparsity": 1 - stats[PRUNED]["params"] / stats[FULL]["params"],
        "flops_full": stats[FULL]["flops"], "flops_pruned": stats[PRUNED]["flops"],
        "flops_ratio": stats[PRUNED]["flops"] / stats[FULL]["flops"],
        "encoding_bytes": sum(sizes_bytes.values()), "encoding_bytes_by_level": sizes_bytes,
        "structure_bytes": len(json.dumps([g.to_json() for g in pruned.groups], separators=(",", ":"))),
        "resident_bytes": resident, "dense_bytes": dense_resident,
        "resident_ratio": resident / dense_resident if dense_resident else None,
        "threads": torch.get_num_threads(), "runs": runs, "switches": switches, "loads": loads,
    }


def format_table(result: dict[str, Any]) -> str:
    peer = result["peer_dense_ms"]
    rows = [
        ("backend, precision", f"{result['backend']}, {result['precision']}"),
        ("swap (median)", f"{result['swap_ms'] * 1e3:.2f} us"),
        ("build instead (load or compile)", f"{result['build_ms']:.1f} ms ({result['swap_speedup_vs_build']:,.0f}x "
                                            f"the swap)"),
        ("disk load of the full model", f"{result['disk_load_ms']:.1f} ms"),
        ("swap speed-up vs disk", f"{result['swap_speedup_vs_disk']:,.0f}x"),
        ("swap / one full inference", f"{result['swap_fraction_of_full_inference'] * 100:.4f} %"),
        ("inference full / pruned / dense", f"{result['infer_full_ms']:.1f} / {result['infer_pruned_ms']:.1f} / "
                                            f"{result['infer_dense_ms']:.1f} ms"),
        ("latency ratio (pruned/full)", f"{result['latency_ratio']:.3f}"),
        ("peer: dense, OpenVINO defaults", "OpenVINO absent" if peer is None else
         f"{peer:.1f} ms (pruned {result['pruned_over_peer']:.2f}x, full {result['full_over_peer']:.2f}x)"),
        ("FLOP ratio", f"{result['flops_ratio']:.3f}"),
        ("params full / pruned", f"{result['params_full']:,} / {result['params_pruned']:,}"),
        ("parameter sparsity", f"{result['param_sparsity'] * 100:.1f} %"),
        ("encodings (all levels)", f"{result['encoding_bytes']} B (+ {result['structure_bytes']} B coupling map)"),
        ("resident / dense bytes", f"{result['resident_bytes']:,} / {result['dense_bytes']:,} "
                                   f"({result['resident_ratio'] or 0:.3f}x)"),
    ]
    for name, level in result["per_level"].items():
        rows.append((f"level {name}", f"{level['imgsz']} px, {level['latency_ms']:.1f} ms, "
                                      f"{level['flops'] / 1e9:.2f} GFLOPs, {level['params']:,} params"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
