"""Prune a trained YOLOv5 into nested levels over its own weights, judged on images no choice has seen.

The shared weights stay exactly the dense model's, so the full level computes what the user's model
computes. A pruned level is three things: the channels it keeps (allocated where they cost the least accuracy
per unit of compute or parameters saved, label-free), the input size it runs at, and a little state of its
own (BatchNorm affine terms, the head's biases), trained by distillation from the dense model at that size.
Every choice (best epoch, allocation) is made on the validation split; the report's figures come from the
test split, next to the obvious alternative: the dense model at smaller input sizes (the resolution front).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from ultralytics.utils.torch_utils import init_seeds

from revperception.bench import measure_levels, time_interleaved
from revperception.checkpoint import save_reversible
from revperception.models import load_model
from revperception.offline.allocation import (
    ConvFlops,
    SensitivityAllocation,
    used_parameters,
)
from revperception.offline.config import PruneConfig
from revperception.offline.evaluate import evaluate, read_data
from revperception.offline.finetune import freeze_batchnorm, reestimate_batchnorm, train_loader
from revperception.offline.losses import head_distance, raw_outputs
from revperception.offline.masks import ChannelMasks, trainable_only
from revperception.offline.report import plot_report, write_report
from revperception.pruning import FULL, Levels, find_groups, permute_to_prefix, rank_channels
from revperception.pruning.levels import level_names
from revperception.pruning.prune import PrunedModel
from revperception.runtime import ReversibleModel, fuse_batchnorms


class Pipeline:
    """One pruning run: allocate, train each level's own state, judge, measure, write."""

    def __init__(self, cfg: PruneConfig) -> None:
        self.cfg = cfg
        init_seeds(cfg.seed)  # python's and numpy's generators too: Ultralytics' augmentations draw from them
        self.device = torch.device(cfg.device)
        self.loaded = load_model(cfg.weights)
        self.model = self.loaded.model.to(self.device).eval()
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.train()
        freeze_batchnorm(self.teacher)  # train-mode head (raw outputs), eval-mode statistics
        example = torch.zeros(1, 3, 2 * self.loaded.stride, 2 * self.loaded.stride, device=self.device)
        self.groups, tp_groups = find_groups(self.model, example)
        self.orders = rank_channels(tp_groups, "l1")
        self.names = level_names(cfg.levels)
        pruned_sizes = cfg.level_imgsz or [cfg.imgsz] * cfg.levels
        self.sizes = {**dict(zip(self.names[:-1], pruned_sizes, strict=True)), FULL: cfg.imgsz}
        stride = self.loaded.stride
        if any(size % stride for size in [*self.sizes.values(), *cfg.front]):
            raise ValueError(f"input sizes must be multiples of the model's stride {stride}: "
                             f"levels {list(self.sizes.values())}, front {cfg.front}")
        self.total_params = sum(p.numel() for p in self.model.parameters())
        self.report: dict[str, Any] = {"settings": asdict(cfg), "levels": {}, "front": {}, "timing": {}}

    # -- allocation ---------------------------------------------------------------------------------

    def sparsity(self, masks: ChannelMasks, keep: list[torch.Tensor]) -> float:
        return 1 - used_parameters(masks, self.model, keep) / self.total_params

    def allocate(self) -> Levels:
        """Nested keep counts, largest pruned level first; each level continues pruning where the last stopped."""
        cfg, masks = self.cfg, ChannelMasks(self.model, self.groups)
        goals = [cfg.sparsity * (i + 1) / cfg.levels for i in range(cfg.levels)]  # largest level first
        keep: dict[str, tuple[int, ...]] = {FULL: tuple(g.size for g in self.groups)}
        alive = masks.full()
        for name, goal in zip(reversed(self.names[:-1]), goals, strict=True):
            allocator = self._allocator(masks, self.sizes[name])
            alive = allocator.prune_until(alive, self.orders, lambda a, goal=goal: self.sparsity(masks, a) >= goal)
            keep[name] = tuple(int(a.sum()) for a in alive)
            flops = ConvFlops(self.model, masks, self.sizes[name])
            print(f"allocation: {name} at {self.sparsity(masks, alive) * 100:.1f} % parameter sparsity, "
                  f"{flops(alive) / flops(masks.full()):.3f} of the FLOPs", flush=True)
        return Levels(names=self.names, keep=keep, imgsz=self.sizes)

    def _allocator(self, masks: ChannelMasks, imgsz: int) -> SensitivityAllocation:
        """Allocation by output damage on a fixed batch of training images at the level's input size."""
        loader = train_loader(self.cfg.data, imgsz=imgsz, batch=self.cfg.batch, stride=self.loaded.stride,
                              workers=self.cfg.workers)
        batches = iter(loader)
        images = torch.cat([next(batches)["img"] for _ in range(max(1, self.cfg.calibration // self.cfg.batch))])
        images = images.to(self.device).float() / 255
        with torch.no_grad():
            target = raw_outputs(self.teacher(images))

        @torch.no_grad()
        def distance(model: nn.Module) -> float:
            model.train()
            freeze_batchnorm(model)
            return float(head_distance(model(images), target))

        cost = ConvFlops(self.model, masks, imgsz) if self.cfg.allocation == "flops" else None
        return SensitivityAllocation(self.model, masks, distance, self.cfg.round_to, cost)

    # -- each level's own state ---------------------------------------------------------------------

    def train_level(self, name: str, levels: Levels) -> dict[str, torch.Tensor]:
        """The level's own state (the shifts of the BatchNorms pruning touched, head biases), trained by distillation
        from the dense model at the level's input size, from BatchNorm means re-estimated there; the epoch that
        validates best (the untrained state included) is kept. Returns what differs from the shared state."""
        cfg, size = self.cfg, self.sizes[name]
        student = copy.deepcopy(self.model)
        masks = ChannelMasks(student, self.groups)
        alive = [torch.arange(g.size) < k for g, k in zip(self.groups, levels.keep[name], strict=True)]
        masks.zero_pruned(alive)
        used = masks.parameter_masks(alive)
        own: dict[nn.Parameter, torch.Tensor] = {}
        for module in student.modules():
            if isinstance(module, nn.BatchNorm2d):  # its shift only: a scale of its own would cost a pass
                own[module.bias] = used.get(module.bias, torch.ones(module.bias.shape, dtype=torch.bool))
            elif isinstance(module, nn.Conv2d) and module.bias is not None:  # the head's outputs
                own[module.bias] = torch.ones(module.bias.shape, dtype=torch.bool)
        loader = train_loader(cfg.data, imgsz=size, batch=cfg.batch, stride=self.loaded.stride, workers=cfg.workers)
        keys = [n for n, t in student.state_dict().items() if _owned(n, student) and t.is_floating_point()]
        shared = (self._validate(student, size), _state(student, keys))
        reestimate_batchnorm(student, self.model, loader, self.device)  # its own means, at its size
        best = (self._validate(student, size), 0, _state(student, keys))
        record = {"imgsz": size, "val_map50_shared_means": shared[0], "val_map50_own_means": best[0], "epochs": []}
        print(f"{name}: untrained, val mAP50 {shared[0]:.4f} (its own means {best[0]:.4f}) at {size} px", flush=True)
        if shared[0] > best[0]:  # re-estimated means are kept only if they validate at least as well
            best = (shared[0], 0, shared[1])
            student.load_state_dict(shared[1], strict=False)
        record["epochs"].append({"epoch": 0, "val_map50": best[0]})
        with trainable_only(student, own) as params:
            optimizer = torch.optim.Adam(params, lr=cfg.lr)  # no weight decay: pruned channels' zeros stay zero
            for epoch in range(1, cfg.epochs + 1):
                loss = self._epoch(student, loader, optimizer, f"{name} epoch {epoch}/{cfg.epochs}")
                score = self._validate(student, size)
                record["epochs"].append({"epoch": epoch, "loss": loss, "val_map50": score})
                print(f"{name}: epoch {epoch}, loss {loss:.4f}, val mAP50 {score:.4f}", flush=True)
                if score > best[0]:
                    best = (score, epoch, _state(student, keys))
                elif epoch - best[1] >= cfg.patience:
                    break
        record.update(best_epoch=best[1], val_map50=best[0])
        self.report["levels"][name] = record
        reference = self.model.state_dict()
        return {n: v for n, v in best[2].items() if not torch.equal(v, reference[n])}

    def _epoch(self, student: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, desc: str) -> float:
        student.train()
        freeze_batchnorm(student)
        total = 0.0
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            images = batch["img"].to(self.device).float() / 255
            with torch.no_grad():
                target = raw_outputs(self.teacher(images))
            loss = head_distance(student(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        return total / max(1, len(loader))

    def _validate(self, model: nn.Module, imgsz: int) -> float:
        return evaluate(model, self.cfg.data, imgsz=imgsz, device=self.device, workers=self.cfg.workers)["map50"]

    # -- judging ------------------------------------------------------------------------------------

    def judge(self, pruned: PrunedModel) -> None:
        """Test-split accuracy of every level and of the dense model at every front size; latency of each,
        interleaved in one run; FLOPs and parameters; and how far the full level is from the dense model."""
        cfg = self.cfg
        split = _report_split(cfg.data)
        self.report["split"] = split
        dense = copy.deepcopy(self.teacher).eval()
        reversible = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels,
                                     private=pruned.private, start_level=FULL, device=self.device)
        exact = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, private=pruned.private,
                                fuse=False, start_level=FULL, device=self.device)  # the same arithmetic as dense
        x = torch.rand(1, 3, cfg.imgsz, cfg.imgsz, device=self.device)
        with torch.no_grad():
            out = dense(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            # channel permutation reorders sums: compare as torch.testing does with atol = rtol = 1e-5
            self.report["full_deviation"] = float(((exact(x) - out).abs() / (1 + out.abs())).max())
        for name in pruned.levels.names:
            reversible.set_level(name)
            result = evaluate(reversible, cfg.data, imgsz=self.sizes[name], split=split, device=self.device)
            self.report["levels"].setdefault(name, {"imgsz": self.sizes[name]}).update(
                map50=result["map50"], map50_95=result["map50_95"])
        stats = {size: measure_levels(pruned, size) for size in {*self.sizes.values(), *cfg.front}}
        for size in cfg.front:
            result = evaluate(dense, cfg.data, imgsz=size, split=split, device=self.device)
            self.report["front"][str(size)] = {"imgsz": size, "map50": result["map50"],
                                               "map50_95": result["map50_95"], "flops": stats[size][FULL]["flops"],
                                               "params": stats[size][FULL]["params"]}
        for name in pruned.levels.names:
            self.report["levels"][name].update(flops=stats[self.sizes[name]][name]["flops"],
                                               params=stats[self.sizes[name]][name]["params"])
        self._latency(pruned)

    def _latency(self, pruned: PrunedModel) -> None:
        """Median batch-1 CPU latency of every level at its size and of the dense model at every front size,
        all interleaved in one run so the machine's drift weighs on each alike."""
        cfg = self.cfg
        dense = copy.deepcopy(self.teacher).cpu().eval()
        fuse_batchnorms(dense)
        dense = dense.to(memory_format=torch.channels_last)  # the kernels the reversible model runs
        reversible = ReversibleModel(copy.deepcopy(pruned.model).cpu(), pruned.groups, pruned.levels,
                                     private=pruned.private, start_level=FULL)

        def level(name: str) -> Any:
            x = torch.rand(1, 3, self.sizes[name], self.sizes[name])
            index = pruned.levels.index(name)
            return lambda: reversible.run(x, index)

        def front(size: int) -> Any:
            x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
            return lambda: dense(x)

        runs = {**{f"level:{n}": level(n) for n in pruned.levels.names},
                **{f"front:{s}": front(s) for s in cfg.front}}
        with torch.inference_mode():
            times = time_interleaved(runs, cfg.latency_runs)
        for name in pruned.levels.names:
            self.report["levels"][name]["latency_ms"] = times[f"level:{name}"]
        for size in cfg.front:
            self.report["front"][str(size)]["latency_ms"] = times[f"front:{size}"]
        self.report["threads"] = torch.get_num_threads()

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, start = self.cfg, time.monotonic()
        levels = self.allocate()
        self.report["timing"]["allocation_s"] = time.monotonic() - start
        permute_to_prefix(self.model, self.groups, self.orders)  # every level keeps a prefix of each group
        private = {}
        for name in self.names[:-1]:
            began = time.monotonic()
            private[name] = self.train_level(name, levels)
            self.report["timing"][f"train_{name}_s"] = time.monotonic() - began
        info = {"source": self.loaded.source, "ranking": "l1", "round_to": cfg.round_to, "allocation": cfg.allocation,
                "finetune": "level-private BatchNorm shifts and head biases, distilled"}
        pruned = PrunedModel(model=self.model, names=self.loaded.names, stride=self.loaded.stride, imgsz=cfg.imgsz,
                             arch=self.loaded.arch, groups=self.groups, levels=levels, info=info, private=private)
        began = time.monotonic()
        self.judge(pruned)
        self.report["timing"]["judge_s"] = time.monotonic() - began
        self.report["timing"]["total_s"] = time.monotonic() - start
        pruned.info["levels"] = {name: {k: self.report["levels"][name][k] for k in ("imgsz", "params", "flops")}
                                 for name in levels.names}
        pruned.info["report"] = {name: {k: self.report["levels"][name].get(k) for k in ("map50", "latency_ms")}
                                 for name in levels.names}
        save_reversible(cfg.out, pruned)
        stem = Path(cfg.out).name.removesuffix(".rvp.safetensors")
        write_report(self.report, Path(cfg.out).with_name(f"{stem}.report.json"))
        plot_report(self.report, Path(cfg.out).parent, stem)
        return self.report


def _owned(name: str, model: nn.Module) -> bool:
    """Whether a level owns this state-dict entry: what sets a BatchNorm's shift (its bias and mean), and the
    biases of convs without BatchNorm. Never a scale: folded, a level's own scale is one more pass over each
    output (docs/offline-pipeline.md says what it cost), where its own shift replaces the shared bias for free."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, nn.BatchNorm2d):
        return leaf in ("bias", "running_mean")
    return isinstance(module, nn.Conv2d) and leaf == "bias"


def _state(model: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the state-dict entries `keys`."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in keys}


def _report_split(data: str) -> str:
    """`test` when the data has one (figures nobody chose on), else `val` (and the report says so)."""
    try:
        read_data(data, "test")
    except ValueError:
        return "val"
    return "test"


def run_pipeline(cfg: PruneConfig) -> dict[str, Any]:
    """Prune `cfg.weights` into levels on `cfg.data` and write the checkpoint, its report and plots."""
    return Pipeline(cfg).run()

