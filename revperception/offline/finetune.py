"""Training a level's own state: BatchNorm means re-estimated at its input size, then its BatchNorm shifts and the
head's biases distilled from the dense model on Ultralytics' augmented, label-free loading; the epoch that
validates best is kept. The shared weights never move, so the full level stays the user's model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_dataloader
from ultralytics.utils import DEFAULT_CFG, colorstr

from revperception.offline.config import PruneConfig
from revperception.offline.evaluate import CachelessDataset, evaluate, read_data
from revperception.offline.losses import head_distance, raw_outputs
from revperception.offline.masks import ChannelMasks, trainable_only
from revperception.pruning import ChannelGroup

# Short trainings on an already trained detector: Ultralytics' default augmentation without mosaic/mixup,
# which suit training from scratch and would make each short epoch noisier.
_HYP = {"mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0}


class FramesDataset(CachelessDataset):
    """Training images whose labels may be missing altogether, as a user's own camera frames are.

    Ultralytics refuses a training split without a single label (its losses need them) and only warns for an
    unlabelled validation split; distillation learns from the teacher, so the scan runs as for the latter.
    """

    def cache_labels(self, path: Path = Path("./labels.cache")) -> dict:
        augment, self.augment = self.augment, False  # read by the scan alone, to choose between error and warning
        try:
            return super().cache_labels(path)
        finally:
            self.augment = augment


def train_loader(data: str | Path, *, imgsz: int, batch: int, stride: int = 32, workers: int = 0,
                 split: str = "train") -> torch.utils.data.DataLoader:
    """Shuffled, augmented batches of the `split` images, which may have no labels at all (distillation)."""
    cfg, paths = read_data(data, split)
    dataset = FramesDataset(
        img_path=paths, imgsz=imgsz, batch_size=batch, augment=True, hyp=get_cfg(DEFAULT_CFG, _HYP), rect=False,
        stride=stride, pad=0.0, prefix=colorstr(f"{split}: "), task="detect", data=cfg,
    )
    return build_dataloader(dataset, batch, workers, shuffle=True)


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm statistics stay as they are while a level's own affine terms train: small CPU batches would
    only add noise to them."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, reference: nn.Module, loader: torch.utils.data.DataLoader,
                         device: torch.device) -> None:
    """The mean of every BatchNorm whose input pruning changed, measured afresh on `loader`'s images.

    A pruned network's inputs to those layers differ from the dense one's, and stale statistics cost it much of
    its accuracy. A BatchNorm whose input is the same as in `reference` (the dense model, same structure) keeps
    its statistics: a few hundred augmented images would only move them away from what the model was trained
    with.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    reference_norms = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    images = next(iter(loader))["img"].to(device).float() / 255
    inputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, _o: inputs.__setitem__(m, i[0])) for m in norms + reference_norms]
    try:
        model.eval()(images)
        reference.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    changed = [(m, r) for m, r in zip(norms, reference_norms, strict=True) if not torch.equal(inputs[m], inputs[r])]
    momenta = [m.momentum for m, _ in changed]
    for m, _ in changed:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    for batch in loader:
        model(batch["img"].to(device).float() / 255)
    for (m, r), momentum in zip(changed, momenta, strict=True):
        m.momentum = momentum
        m.running_var.copy_(r.running_var)  # the mean sets the shift; a level's own variance would be a scale
    model.eval()


def own_parameters(model: nn.Module, used: dict[nn.Parameter, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """The entries a level trains: each BatchNorm's shift where its channel is alive (`used`, from
    ChannelMasks.parameter_masks), and the head's biases. Never a scale: a scale of its own would cost a pass."""
    own: dict[nn.Parameter, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            own[module.bias] = used.get(module.bias, torch.ones(module.bias.shape, dtype=torch.bool))
        elif isinstance(module, nn.Conv2d) and module.bias is not None:  # the head's outputs
            own[module.bias] = torch.ones(module.bias.shape, dtype=torch.bool)
    return own


def owned(name: str, model: nn.Module) -> bool:
    """Whether a level owns this state-dict entry: what sets a BatchNorm's shift (its bias and mean), and the
    biases of convs without BatchNorm. Folded, a level's own shift replaces the shared bias for free
    (docs/offline-pipeline.md says what a scale of its own cost)."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, nn.BatchNorm2d):
        return leaf in ("bias", "running_mean")
    return isinstance(module, nn.Conv2d) and leaf == "bias"


@dataclass
class TrainedLevel:
    private: dict[str, torch.Tensor]  # the state-dict entries that differ from the shared (dense) state
    record: dict[str, Any]  # for the report: input size, validation scores per epoch, the epoch kept


def train_level(model: nn.Module, teacher: nn.Module, groups: Sequence[ChannelGroup], keep: Sequence[int], *,
                imgsz: int, cfg: PruneConfig, stride: int, device: torch.device, name: str = "level") -> TrainedLevel:
    """Train the own state of the level that keeps the first `keep[i]` channels of each group of `model` (the
    dense model, channels permuted to prefixes; left untouched) at `imgsz`, distilled from `teacher` (train-mode
    head, frozen BatchNorm statistics). Every choice is made on `cfg.data`'s validation split; the untrained
    state (with shared or re-estimated means) competes with every epoch."""
    student = copy.deepcopy(model)
    masks = ChannelMasks(student, groups)
    alive = [torch.arange(g.size) < k for g, k in zip(groups, keep, strict=True)]
    masks.zero_pruned(alive)
    own = own_parameters(student, masks.parameter_masks(alive))
    loader = train_loader(cfg.data, imgsz=imgsz, batch=cfg.batch, stride=stride, workers=cfg.workers)
    keys = [n for n, t in student.state_dict().items() if owned(n, student) and t.is_floating_point()]

    def validate() -> float:
        return evaluate(student, cfg.data, imgsz=imgsz, device=device, workers=cfg.workers)["map50"]

    def snapshot() -> dict[str, torch.Tensor]:
        state = student.state_dict()
        return {k: state[k].detach().clone() for k in keys}

    shared = (validate(), snapshot())
    reestimate_batchnorm(student, model, loader, device)  # its own means, at its size
    best = (validate(), 0, snapshot())
    record: dict[str, Any] = {"imgsz": imgsz, "val_map50_shared_means": shared[0], "val_map50_own_means": best[0],
                              "epochs": []}
    print(f"{name}: untrained, val mAP50 {shared[0]:.4f} (its own means {best[0]:.4f}) at {imgsz} px", flush=True)
    if shared[0] > best[0]:  # re-estimated means are kept only if they validate at least as well
        best = (shared[0], 0, shared[1])
        student.load_state_dict(shared[1], strict=False)
    record["epochs"].append({"epoch": 0, "val_map50": best[0]})
    with trainable_only(student, own) as params:
        optimizer = torch.optim.Adam(params, lr=cfg.lr)  # no weight decay: pruned channels' zeros stay zero
        for epoch in range(1, cfg.epochs + 1):
            loss = _epoch(student, teacher, loader, optimizer, device=device, desc=f"{name} epoch {epoch}/{cfg.epochs}")
            score = validate()
            record["epochs"].append({"epoch": epoch, "loss": loss, "val_map50": score})
            print(f"{name}: epoch {epoch}, loss {loss:.4f}, val mAP50 {score:.4f}", flush=True)
            if score > best[0]:
                best = (score, epoch, snapshot())
            elif epoch - best[1] >= cfg.patience:
                break
    record.update(best_epoch=best[1], val_map50=best[0])
    reference = model.state_dict()
    return TrainedLevel(private={n: v for n, v in best[2].items() if not torch.equal(v, reference[n])},
                        record=record)


def _epoch(student: nn.Module, teacher: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, *,
           device: torch.device, desc: str) -> float:
    """One distillation pass over `loader`; the mean loss."""
    student.train()
    freeze_batchnorm(student)
    total = 0.0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        images = batch["img"].to(device).float() / 255
        with torch.no_grad():
            target = raw_outputs(teacher(images))
        loss = head_distance(student(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / max(1, len(loader))
