"""Prune a trained YOLOv5 into nested levels over its own weights, judged on images no choice has seen.

The shared weights stay exactly the dense model's, so the full level computes what the user's model
computes. A pruned level is three things: the channels it keeps (allocated where they cost the least accuracy
per unit of compute or parameters saved, label-free), the input size it runs at, and a little state of its
own (BatchNorm shifts, the head's biases), trained by distillation from the dense model at that size.
Every choice (best epoch, allocation) is made on the validation split; the report's figures come from the
test split, next to the obvious alternative: the dense model at smaller input sizes (the resolution front).

The run is four phases over one `PipelineState`: `allocate`, `train_levels`, `judge` (offline/judge.py) and
`write`; `run_pipeline` runs them in order and times each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revperception.checkpoint import save_reversible
from revperception.offline.allocation import ConvFlops, SensitivityAllocation, used_parameters
from revperception.offline.config import PruneConfig
from revperception.offline.finetune import freeze_batchnorm, train_level, train_loader
from revperception.offline.judge import judge
from revperception.offline.losses import head_distance, raw_outputs
from revperception.offline.masks import ChannelMasks
from revperception.offline.report import plot_report, write_report
from revperception.offline.state import PipelineState
from revperception.pruning import FULL, Levels, permute_to_prefix
from revperception.pruning.prune import PrunedModel


def allocate(state: PipelineState) -> Levels:
    """Nested keep counts, largest pruned level first; each level continues pruning where the last stopped,
    until its share of `cfg.sparsity` (parameters) is reached."""
    cfg, masks = state.cfg, ChannelMasks(state.model, state.groups)
    total = sum(p.numel() for p in state.model.parameters())

    def sparsity(alive: list[torch.Tensor]) -> float:
        return 1 - used_parameters(masks, state.model, alive) / total

    goals = [cfg.sparsity * (i + 1) / cfg.levels for i in range(cfg.levels)]  # largest level first
    keep: dict[str, tuple[int, ...]] = {FULL: tuple(g.size for g in state.groups)}
    alive = masks.full()
    for name, goal in zip(reversed(state.pruned_names), goals, strict=True):
        allocator = _allocator(state, masks, state.sizes[name])
        alive = allocator.prune_until(alive, state.orders, lambda a, goal=goal: sparsity(a) >= goal)
        keep[name] = tuple(int(a.sum()) for a in alive)
        flops = ConvFlops(state.model, masks, state.sizes[name])
        print(f"allocation: {name} at {sparsity(alive) * 100:.1f} % parameter sparsity, "
              f"{flops(alive) / flops(masks.full()):.3f} of the FLOPs", flush=True)
    return Levels(names=state.names, keep=keep, imgsz=state.sizes)


def _allocator(state: PipelineState, masks: ChannelMasks, imgsz: int) -> SensitivityAllocation:
    """Allocation by output damage on a fixed batch of training images at the level's input size."""
    cfg = state.cfg
    loader = train_loader(cfg.data, imgsz=imgsz, batch=cfg.batch, stride=state.loaded.stride, workers=cfg.workers)
    batches = iter(loader)
    images = torch.cat([next(batches)["img"] for _ in range(max(1, cfg.calibration // cfg.batch))])
    images = images.to(state.device).float() / 255
    with torch.no_grad():
        target = raw_outputs(state.teacher(images))

    @torch.no_grad()
    def distance(model: nn.Module) -> float:
        model.train()
        freeze_batchnorm(model)
        return float(head_distance(model(images), target))

    cost = ConvFlops(state.model, masks, imgsz) if cfg.allocation == "flops" else None
    return SensitivityAllocation(state.model, masks, distance, cfg.round_to, cost)


def train_levels(state: PipelineState, levels: Levels) -> PrunedModel:
    """Permute the model's channels so every level keeps a prefix of each group, train each pruned level's own
    state, and return the reversible model they make."""
    cfg = state.cfg
    permute_to_prefix(state.model, state.groups, state.orders)
    private = {}
    for name in state.pruned_names:
        with _timed(state, f"train_{name}_s"):
            trained = train_level(state.model, state.teacher, state.groups, levels.keep[name],
                                  imgsz=state.sizes[name], cfg=cfg, stride=state.loaded.stride,
                                  device=state.device, name=name)
        private[name] = trained.private
        state.report["levels"][name] = trained.record
    info = {"source": state.loaded.source, "ranking": "l1", "round_to": cfg.round_to, "allocation": cfg.allocation,
            "finetune": "level-private BatchNorm shifts and head biases, distilled"}
    return PrunedModel(model=state.model, names=state.loaded.names, stride=state.loaded.stride, imgsz=cfg.imgsz,
                       arch=state.loaded.arch, groups=state.groups, levels=levels, info=info, private=private)


def write(state: PipelineState, pruned: PrunedModel) -> None:
    """The checkpoint (with each level's size, cost and judged figures in its info), the JSON report and plots."""
    levels = state.report["levels"]
    pruned.info["levels"] = {name: {k: levels[name][k] for k in ("imgsz", "params", "flops")}
                             for name in pruned.levels.names}
    pruned.info["report"] = {name: {k: levels[name].get(k) for k in ("map50", "latency_ms")}
                             for name in pruned.levels.names}
    out = Path(state.cfg.out)
    save_reversible(out, pruned)
    stem = out.name.removesuffix(".rvp.safetensors")
    write_report(state.report, out.with_name(f"{stem}.report.json"))
    plot_report(state.report, out.parent, stem)


def run_pipeline(cfg: PruneConfig) -> dict[str, Any]:
    """Prune `cfg.weights` into levels on `cfg.data` and write the checkpoint, its report and plots."""
    state = PipelineState.from_config(cfg)
    with _timed(state, "total_s"):
        with _timed(state, "allocation_s"):
            levels = allocate(state)
        pruned = train_levels(state, levels)
        with _timed(state, "judge_s"):
            judge(state, pruned)
    write(state, pruned)
    return state.report


@contextmanager
def _timed(state: PipelineState, key: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    state.report["timing"][key] = time.monotonic() - began
