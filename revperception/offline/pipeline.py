"""Algorithm 1 of "Back to the Future", generalised to nested levels: fine-tune down, then fine-tune up.

Down: each step prunes further filters (lowest importance among the channels still alive), in every group
alike or where they cost least (`offline/allocation.py`), fine-tunes what remains with the pruned entries
held at exactly zero, keeping the epoch that validates best, and evaluates; the run stops at the first step
that breaks the stop rule and keeps the last passing one as `pruned`. Every channel remembers the step that
pruned it, so the levels are nested by construction.
Up: level by level, the weights a larger level adds are regrown to the full level's own values (the dense
ones, or with `--cotrain` those trained through the full-architecture term while fine-tuning down) and
trained alone, every weight a smaller level uses frozen, so each level keeps the accuracy it had.
A run saves its state after every step and level; `resume` continues from the last one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from ultralytics.utils.torch_utils import init_seeds

from revperception.bench import level_latencies, measure_levels
from revperception.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_reversible
from revperception.models import load_model
from revperception.offline.allocation import ALLOCATIONS, SensitivityAllocation, uniform_targets, used_parameters
from revperception.offline.evaluate import evaluate
from revperception.offline.finetune import (
    WeightAverage,
    freeze_batchnorm,
    linear_warmup,
    recalibrate_batchnorm,
    train_epoch,
    train_loader,
)
from revperception.offline.losses import head_distance, make_loss, raw_outputs
from revperception.offline.masks import ChannelMasks, trainable_only, with_values
from revperception.offline.reconstruct import reconstruct
from revperception.offline.report import plot_report, write_report
from revperception.pruning import FULL, PRUNED, Levels, find_groups, permute_to_prefix, rank_channels
from revperception.pruning.prune import PrunedModel

NEVER = 1 << 30  # the "pruned at step" of a channel that was never pruned
OWN = "full_values."  # prefix of the full level's own values in the saved state
WARMUP_EPOCHS = 2  # fine-tuning warms its learning rate up linearly over this many epochs


@dataclass
class PruneConfig:
    """Everything `revperception prune` takes; stored in the report and checked on resume."""

    weights: str
    data: str
    out: str
    imgsz: int = 640
    batch: int = 8
    epochs: int = 1  # fine-tuning epochs after each down step
    step: float = 0.05  # uniform: further fraction of every group's filters per step; sensitivity: of parameters
    allocation: str = "uniform"  # which groups a step prunes: "uniform" (the paper) or "sensitivity"
    calibration: int = 32  # sensitivity: images the output damage of each candidate is measured on
    full_weight: float = 0.0  # weight of the full architecture's loss beside a smaller level's (0: the paper)
    cotrain: bool = False  # train the full level's own values (the entries a level prunes) through that loss too
    recalibrate: bool = False  # down: correct each step's BatchNorm shift before fine-tuning, if that validates better
    reconstruct: bool = False  # down: refit each step's weights to the dense outputs first, if that validates better
    max_fraction: float = 0.9
    max_drop: float = 0.1  # stop rule: relative mAP50 drop from the dense model
    min_map: float | None = None  # stop rule: absolute mAP50 floor
    reference_weights: str | None = None  # stop rule: stay above this model's mAP50
    levels: int = 1
    up_tol: float = 0.01
    up_epochs: int = 5
    patience: int = 3  # stop fine-tuning a step or level after this many epochs without a validation gain
    loss: str = "distill"
    feature_weight: float = 0.0  # distill: weight of the blocks' feature error beside the head's outputs
    lr: float = 1e-4
    ema: float = 0.0  # decay of the moving average of the weights that each epoch evaluates and keeps (0: off)
    ranking: str = "l1"
    round_to: int = 16
    device: str = "cpu"
    workers: int = 0
    seed: int = 0


def _work_dir(out: str) -> Path:
    return Path(out).with_name(Path(out).name.removesuffix(".rvp.safetensors") + ".work")


class Pipeline:
    """One pruning run; the state it saves is its weights, each channel's pruning step, and the report."""

    def __init__(self, cfg: PruneConfig) -> None:
        if cfg.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {cfg.allocation!r}; choose from {', '.join(ALLOCATIONS)}")
        if cfg.cotrain and cfg.full_weight <= 0:
            raise ValueError("--cotrain trains through the full architecture's loss: give it a --full-weight above 0")
        self.cfg = cfg
        init_seeds(cfg.seed)  # python's and numpy's generators too: Ultralytics' augmentations draw from them
        self.device = torch.device(cfg.device)
        self.loaded = load_model(cfg.weights)
        self.model = self.loaded.model.to(self.device)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.train()
        freeze_batchnorm(self.teacher)  # train-mode head (raw outputs), eval-mode statistics
        example = torch.zeros(1, 3, 2 * self.loaded.stride, 2 * self.loaded.stride, device=self.device)
        self.groups, self.tp_groups = find_groups(self.model, example)
        self.masks = ChannelMasks(self.model, self.groups)
        self.dense_orders = rank_channels(self.tp_groups, "l1" if cfg.ranking == "taylor" else cfg.ranking)
        self.loss = make_loss(cfg.loss, self.model, self.teacher, cfg.feature_weight)
        self.loader = train_loader(cfg.data, imgsz=cfg.imgsz, batch=cfg.batch, stride=self.loaded.stride,
                                   workers=cfg.workers, labels=cfg.loss == "detect")
        self.work = _work_dir(cfg.out)
        self.drop = [torch.full((g.size,), NEVER, dtype=torch.long) for g in self.groups]
        # The full level's values for every entry: the pruned model holds zeros where a level prunes, the full
        # architecture reads these there (the dense ones unless co-trained), and growing gives them back.
        self.full_values = {name: p.detach().clone().requires_grad_(cfg.cotrain)
                            for name, p in self.teacher.named_parameters()}
        self.allocator: SensitivityAllocation | None = None  # made on first use: it draws calibration images
        self.report: dict[str, Any] = {"settings": asdict(cfg), "steps": [], "up": [], "levels": {},
                                       "reference": None, "timing": {}}

    # -- state --------------------------------------------------------------------------------------

    def _save_state(self, phase: str, next_level: int = 0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        meta = {"phase": phase, "next_level": next_level, "report": self.report,
                "drop": [d.tolist() for d in self.drop]}
        tensors = {**self.model.state_dict(), **{OWN + n: v.detach() for n, v in self.full_values.items()}}
        save_checkpoint(self.work / "state.rvp.safetensors", tensors, meta)

    def _load_state(self) -> tuple[str, int]:
        path = self.work / "state.rvp.safetensors"
        try:
            state = load_checkpoint(path, device=str(self.device))
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: {err}") from err
        meta = state.metadata
        keys = ("weights", "data", "imgsz", "step", "allocation", "round_to", "levels", "loss", "feature_weight",
                "full_weight", "cotrain", "recalibrate", "reconstruct")
        changed = [k for k in keys if meta["report"]["settings"].get(k) != asdict(self.cfg)[k]]
        if changed:
            raise ValueError(f"cannot resume {path}: it was made with different {', '.join(changed)}")
        self._restore(({k: v for k, v in state.tensors.items() if not k.startswith(OWN)},
                       {k.removeprefix(OWN): v for k, v in state.tensors.items() if k.startswith(OWN)}))
        self.drop = [torch.tensor(d, dtype=torch.long) for d in meta["drop"]]
        self.report = meta["report"]
        return meta["phase"], int(meta["next_level"])

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Everything fine-tuning moves: the model's weights and the full level's own values."""
        return copy.deepcopy(self.model.state_dict()), {n: v.detach().clone() for n, v in self.full_values.items()}

    @torch.no_grad()
    def _restore(self, snapshot: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        state, values = snapshot
        self.model.load_state_dict(state)
        for name, value in values.items():
            self.full_values[name].copy_(value)

    # -- helpers ------------------------------------------------------------------------------------

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        result = evaluate(model, self.cfg.data, imgsz=self.cfg.imgsz, device=self.device, workers=self.cfg.workers)
        return {"map50": result["map50"], "map50_95": result["map50_95"]}

    def _alive(self, step: int) -> list[torch.Tensor]:
        """Channels the architecture after down step `step` keeps (step 0: all)."""
        return [d > step for d in self.drop]

    def _threshold(self, dense_map50: float) -> float:
        cfg = self.cfg
        if cfg.min_map is not None:
            return cfg.min_map
        if self.report["reference"] is not None:
            return self.report["reference"]["map50"]
        return dense_map50 * (1 - cfg.max_drop)

    def _cotrained(self, also: tuple) -> list[torch.Tensor]:
        """The full level's own values, when they train beside the model: with `--cotrain`, wherever the full
        architecture's loss is used. Its gradient reaches only their entries outside the level being trained."""
        return list(self.full_values.values()) if also and self.cfg.cotrain else []

    def _optimise(self, masks: dict[nn.Parameter, torch.Tensor], epochs: int, desc: str, *,
                  after_epoch: Any = None, also: tuple = (), average: WeightAverage | None = None) -> None:
        with trainable_only(self.model, masks) as params:
            # no weight decay: frozen entries, and the values no gradient reaches, stay put
            optimizer = torch.optim.Adam(params + self._cotrained(also), lr=self.cfg.lr)
            scheduler = linear_warmup(optimizer, min(WARMUP_EPOCHS, epochs) * len(self.loader))
            for epoch in range(epochs):
                train_epoch(self.model, self.loader, self.loss, optimizer, device=self.device,
                            desc=f"{desc} epoch {epoch + 1}/{epochs}", also=also, scheduler=scheduler,
                            average=average)
                if after_epoch is not None and after_epoch(epoch):
                    return

    def _train_best(self, masks: dict[nn.Parameter, torch.Tensor], epochs: int, desc: str, *,
                    start: dict[str, float] | None = None, also: tuple = (), level: str | None = None,
                    enough: float | None = None) -> dict[str, float]:
        """Fine-tune for up to `epochs` and keep the epoch with the best validation mAP50, the starting weights
        included (a tie goes to the later epoch); stop after `patience` epochs without a gain, or at `enough`.

        On a few hundred images, training past the best epoch drifts below it (YOLOv5n on 96 COCO images at 24 %
        sparsity: +0.06 mAP50 after 5 epochs, +0.03 after 10), so an epoch that does not help is not kept.
        `level` logs every epoch's result in the report's `up` list. Returns the kept epoch's metrics.
        With `--ema`, an epoch is judged, and kept, by the moving average of the weights (`WeightAverage`).
        Co-trained full values are averaged and kept with the epoch they trained in.
        """
        best = {"metrics": start or self._evaluate(self.model), "epoch": 0, "state": None}
        trained = [*self.model.parameters(), *self._cotrained(also)]
        average = WeightAverage(trained, self.cfg.ema, len(self.loader)) if self.cfg.ema else None
        judged = average.applied if average is not None else contextlib.nullcontext

        def check(epoch: int) -> bool:
            with judged():
                result = self._evaluate(self.model)
                if result["map50"] >= best["metrics"]["map50"]:
                    best.update(metrics=result, epoch=epoch + 1, state=self._snapshot())
            if level is not None:
                self.report["up"].append({"level": level, "epoch": epoch + 1, **result})
            return (enough is not None and result["map50"] >= enough) or epoch + 1 - best["epoch"] >= self.cfg.patience

        initial = self._snapshot()
        self._optimise(masks, epochs, desc, after_epoch=check, also=also, average=average)
        self._restore(best["state"] or initial)
        return {**best["metrics"], "best_epoch": best["epoch"]}

    def _importance_orders(self) -> list[torch.Tensor]:
        if self.cfg.ranking == "taylor":  # gradients of the fine-tuning loss on one batch
            self.model.zero_grad()
            batch = next(iter(self.loader))
            images = batch["img"].to(self.device).float() / 255
            self.loss(self.model, images, {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                           for k, v in batch.items()}).backward()
        return rank_channels(self.tp_groups, self.cfg.ranking)

    def _sparsity(self, keep: list[torch.Tensor]) -> float:
        """Fraction of the model's parameters the architecture `keep` does not use."""
        return 1 - used_parameters(self.masks, self.model, keep) / sum(p.numel() for p in self.model.parameters())

    def _sensitivity(self) -> SensitivityAllocation:
        """Allocation by output damage on a fixed batch of training images, measured against the dense model."""
        batches = iter(self.loader)
        images = torch.cat([next(batches)["img"] for _ in range(max(1, self.cfg.calibration // self.cfg.batch))])
        images = images.to(self.device).float() / 255
        with torch.no_grad():
            target = raw_outputs(self.teacher(images))

        @torch.no_grad()
        def distance(model: nn.Module) -> float:
            model.train()
            freeze_batchnorm(model)
            return float(head_distance(model(images), target))

        return SensitivityAllocation(self.model, self.masks, distance, self.cfg.round_to)

    def _targets(self, fraction: float, alive: list[torch.Tensor], orders: list[torch.Tensor]) -> list[int]:
        """Channels each group keeps after the step reaching `fraction` (of filters, or of parameters)."""
        if self.cfg.allocation == "uniform":
            return uniform_targets(self.groups, fraction, self.cfg.round_to)
        if self.allocator is None:
            self.allocator = self._sensitivity()
        total = sum(p.numel() for p in self.model.parameters())
        budget = used_parameters(self.masks, self.model, alive) - round((1 - fraction) * total)
        return self.allocator.targets(alive, orders, budget) if budget > 0 else [int(a.sum()) for a in alive]

    def _start(self, masks: dict[nn.Parameter, torch.Tensor]) -> tuple[dict[str, float] | None, dict[str, float]]:
        """Before a step fine-tunes, the label-free corrections it asked for, each kept only if it validates at
        least as well as the weights before it. `--recalibrate`: the BatchNorm shift (`recalibrate_batchnorm`;
        YOLOv5n at 30 %, untrained: mAP50 0.357 -> 0.436). `--reconstruct`: least-squares refitting
        (`offline/reconstruct.py`; a 30 % step of YOLOv5n, untrained: 0.410 -> 0.478).

        Returns the kept start's metrics (None: nothing measured) and every figure for the step's report.
        """
        corrections = []
        if self.cfg.recalibrate:
            corrections.append(("recalibrated",
                                lambda: recalibrate_batchnorm(self.model, self.teacher, self.loader, self.device)))
        if self.cfg.reconstruct:
            batches = [batch["img"].to(self.device).float() / 255 for batch in self.loader]
            corrections.append(("reconstructed", lambda: reconstruct(self.model, self.teacher, masks, batches)))
        if not corrections:
            return None, {}
        best = self._evaluate(self.model)
        record = {"map50_pruned_only": best["map50"]}
        for name, correct in corrections:
            saved = copy.deepcopy(self.model.state_dict())
            correct()
            result = self._evaluate(self.model)
            record[f"map50_{name}"] = result["map50"]
            if result["map50"] >= best["map50"]:
                best = result
            else:
                self.model.load_state_dict(saved)
        return best, record

    def _baseline(self, alive_counts: list[int]) -> dict[str, float]:
        """The paper's no-fine-tuning baseline at the same channel counts: the dense model, L1-pruned once."""
        model = copy.deepcopy(self.teacher)
        keep = []
        for order, count, group in zip(self.dense_orders, alive_counts, self.groups, strict=True):
            alive = torch.zeros(group.size, dtype=torch.bool)
            alive[order[:count]] = True
            keep.append(alive)
        ChannelMasks(model, self.groups).zero_pruned(keep)
        result = self._evaluate(model)
        return {"map50_no_finetune": result["map50"], "map50_95_no_finetune": result["map50_95"]}

    # -- the two phases -----------------------------------------------------------------------------

    def fine_tune_down(self) -> None:
        cfg, report = self.cfg, self.report
        threshold = self._threshold(report["dense"]["map50"])
        step = len(report["steps"])
        fraction = report["steps"][-1]["target"] if report["steps"] else 0.0
        progress = tqdm(desc="fine-tune down", unit="step", initial=step)
        while round(fraction + cfg.step, 6) <= cfg.max_fraction:
            fraction = round(fraction + cfg.step, 6)
            alive = self._alive(NEVER - 1)
            orders = self._importance_orders()
            targets = self._targets(fraction, alive, orders)
            if all(t >= int(a.sum()) for t, a in zip(targets, alive, strict=True)):
                continue  # rounding to channel blocks leaves this fraction with nothing new to prune
            step += 1
            for order, target, group_alive, drop in zip(orders, targets, alive, self.drop, strict=True):
                ranked_alive = order[group_alive[order]]
                drop[ranked_alive[target:]] = step
            keep = self._alive(step)
            self.masks.zero_pruned(keep)
            masks = self.masks.parameter_masks(keep)
            start, corrections = self._start(masks)
            also = ((cfg.full_weight, with_values(self.model, masks, self.full_values)),) if cfg.full_weight > 0 else ()
            result = self._train_best(masks, cfg.epochs, f"step {step} ({fraction:.0%})", also=also,
                                      start=start)
            pruned_filters = sum(int((~k).sum()) for k in keep) / sum(g.size for g in self.groups)
            record = {"step": step, "target": fraction, "filter_fraction": pruned_filters,
                      "param_sparsity": self._sparsity(keep), **result, **corrections,
                      **self._baseline([int(k.sum()) for k in keep])}
            record["passed"] = record["map50"] >= threshold
            report["steps"].append(record)
            progress.update()
            progress.set_postfix(map50=f"{record['map50']:.3f}", threshold=f"{threshold:.3f}")
            if not record["passed"]:
                break
            self._save_state("down")
        progress.close()
        passing = [r["step"] for r in report["steps"] if r["passed"]]
        if not passing:
            raise ValueError(f"no pruning step kept mAP50 above {threshold:.3f}; try a smaller --step or tolerance")
        if not report["steps"][-1]["passed"]:  # back to the last passing step's weights, masks and report
            failed = report["steps"][-1]
            self._load_state()
            self.report["steps"].append(failed)
        self._choose_levels(passing)
        self._save_state("up")

    def _choose_levels(self, passing: list[int]) -> None:
        """`pruned` is the last passing step; K-1 intermediate levels are spread evenly below it."""
        pruned = passing[-1]
        wanted = [round(pruned * i / self.cfg.levels) for i in range(1, self.cfg.levels)]
        inter = sorted({min(passing, key=lambda s, w=w: abs(s - w)) for w in wanted} - {pruned}, reverse=True)
        names = [PRUNED, *(f"level{i}" for i in range(1, len(inter) + 1)), FULL]
        self.report["level_steps"] = dict(zip(names, [pruned, *inter, 0], strict=True))

    def fine_tune_up(self, start: int) -> None:
        cfg, report = self.cfg, self.report
        names = list(report["level_steps"])
        steps = [report["level_steps"][n] for n in names]
        target = report["dense"]["map50"] - cfg.up_tol
        for index in range(max(start, 1), len(names)):
            name, smaller, larger = names[index], self._alive(steps[index - 1]), self._alive(steps[index])
            old, new = self.masks.parameter_masks(smaller), self.masks.parameter_masks(larger)
            grow = {p: new[p] & ~old[p] for p in new}
            start_metrics = self._regrow_best(name, grow, old)
            also = ()
            if cfg.full_weight > 0 and name != FULL:  # an intermediate level's new weights are the full level's too
                also = ((cfg.full_weight, with_values(self.model, new, self.full_values)),)
            result = self._train_best(grow, cfg.up_epochs, f"grow {name}", start=start_metrics, level=name,
                                      enough=target if name == FULL else None, also=also)
            report["up"].append({"level": name, "epoch": "final", **result})
            self._save_state("up", index + 1)

    @torch.no_grad()
    def _regrow(self, grow: dict[nn.Parameter, torch.Tensor], old: dict[nn.Parameter, torch.Tensor], *,
                zero_links: bool) -> None:
        """Give a level's new weights back the full level's values; with `zero_links`, links from the new
        channels into filters the smaller level already has start at zero instead, so the larger level starts
        out computing exactly what the smaller one does."""
        for name, p in self.model.named_parameters():
            if p not in grow:
                continue
            mask = grow[p].to(p.device).expand_as(p)
            p[mask] = self.full_values[name][mask]
            if zero_links and p.dim() == 4:  # rows (filters) the smaller level already has
                existing_rows = old[p].flatten(1).any(1).to(p.device)
                p[mask & existing_rows.view(-1, 1, 1, 1)] = 0

    def _regrow_best(self, level: str, grow: dict[nn.Parameter, torch.Tensor],
                     old: dict[nn.Parameter, torch.Tensor]) -> dict[str, float]:
        """Start growing from whichever regrowth scores better on validation.

        Dense values next to fine-tuned weights can land below the smaller level (seen on YOLOv5n: full 0.458
        against pruned 0.480); zero links start exactly at the smaller level but leave a badly pruned level
        little to build on. Measuring both costs two evaluations and takes the better start; returns its metrics.
        """
        results = {}
        for zero_links in (False, True):
            self._regrow(grow, old, zero_links=zero_links)
            results[zero_links] = self._evaluate(self.model)
        best = max(results, key=lambda z: results[z]["map50"])
        self._regrow(grow, old, zero_links=best)
        self.report["up"].append({"level": level, "epoch": 0, "init": "zero links" if best else "full values",
                                  "map50_full_values": results[False]["map50"],
                                  "map50_zero_links": results[True]["map50"]})
        return results[best]

    # -- the run -------------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        phase, next_level = self._load_state() if resume else ("new", 0)
        elapsed = self.report["timing"].get("total_s", 0.0)
        if phase == "new":
            self.report["dense"] = self._evaluate(self.model)
            if self.cfg.reference_weights:
                reference = load_model(self.cfg.reference_weights).model.to(self.device)
                self.report["reference"] = {"name": self.cfg.reference_weights, **self._evaluate(reference)}
            self._save_state("down")
            phase = "down"
        if phase == "down":
            self.fine_tune_down()
        self.fine_tune_up(next_level)
        pruned = self._finish()
        self.report["timing"]["total_s"] = elapsed + time.perf_counter() - start
        stem = Path(self.cfg.out).name.removesuffix(".rvp.safetensors")
        save_reversible(self.cfg.out, pruned)
        write_report(self.report, Path(self.cfg.out).with_name(f"{stem}.report.json"))
        plot_report(self.report, Path(self.cfg.out).parent, stem)
        shutil.rmtree(self.work)  # the run is complete: its resumable state is no longer needed
        return self.report

    def _finish(self) -> PrunedModel:
        """Permute so every level is a prefix, measure every step's architecture, assemble the checkpoint."""
        report = self.report
        orders = [torch.sort(-d, stable=True).indices for d in self.drop]  # never-pruned first, then latest
        self.model.cpu()
        permute_to_prefix(self.model, self.groups, orders)
        self.drop = [d[o] for d, o in zip(self.drop, orders, strict=True)]
        passing = [0] + [r["step"] for r in report["steps"] if r["passed"]]
        every = self._levels({f"s{s}": s for s in passing})
        probe = PrunedModel(self.model, self.loaded.names, self.loaded.stride, self.cfg.imgsz, self.loaded.arch,
                            self.groups, every, {})
        stats, latency = measure_levels(probe), level_latencies(probe)
        full = stats[FULL]
        step_names = dict(zip(passing[::-1], every.names, strict=True))
        report["dense"].update(params=full["params"], flops=full["flops"], latency_ms=latency[FULL])
        for record in report["steps"]:
            if record["passed"]:
                level = step_names[record["step"]]
                record.update(flops_ratio=stats[level]["flops"] / full["flops"], latency_ms=latency[level])
        levels = self._levels(report["level_steps"])
        finals = {u["level"]: u for u in report["up"] if u["epoch"] == "final"}
        for name, step in report["level_steps"].items():
            metrics = finals.get(name) or next(r for r in report["steps"] if r["step"] == step)
            level = step_names[step]
            report["levels"][name] = {"step": step, "map50": metrics["map50"], "map50_95": metrics["map50_95"],
                                      "params": stats[level]["params"], "flops": stats[level]["flops"],
                                      "latency_ms": latency[level]}
        info = {"source": self.cfg.weights, "data": self.cfg.data, "finetune": f"down+up ({self.cfg.loss})",
                "ranking": self.cfg.ranking, "round_to": self.cfg.round_to, "levels": report["levels"],
                "dense": report["dense"]}
        return PrunedModel(self.model, self.loaded.names, self.loaded.stride, self.cfg.imgsz, self.loaded.arch,
                           self.groups, levels, json.loads(json.dumps(info)))

    def _levels(self, steps_by_name: dict[str, int]) -> Levels:
        """Levels over the (already permuted) model: names map to down steps, smallest architecture first."""
        ordered = sorted(steps_by_name.items(), key=lambda item: -item[1])
        names = [PRUNED, *(f"level{i}" for i in range(1, len(ordered) - 1)), FULL]
        keep = {name: tuple(int((d > step).sum()) for d in self.drop)
                for name, (_, step) in zip(names, ordered, strict=True)}
        return Levels(names=tuple(names), keep=keep)


def run_pipeline(cfg: PruneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune `cfg.weights` down and up on `cfg.data` and write the checkpoint, its report and plots."""
    return Pipeline(cfg).run(resume=resume)
