"""The training loop shared by fine-tuning down and up: Ultralytics data loading, frozen BatchNorm statistics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_dataloader
from ultralytics.utils import DEFAULT_CFG, colorstr

from revperception.offline.evaluate import CachelessDataset, read_data
from revperception.offline.losses import Loss

# Short fine-tunes of an already trained detector: Ultralytics' default augmentation without mosaic/mixup,
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
                 split: str = "train", labels: bool = True) -> torch.utils.data.DataLoader:
    """Shuffled, augmented batches of the `split` images; with `labels` False (distillation), the images may
    have no labels at all."""
    cfg, paths = read_data(data, split)
    dataset = (CachelessDataset if labels else FramesDataset)(
        img_path=paths, imgsz=imgsz, batch_size=batch, augment=True, hyp=get_cfg(DEFAULT_CFG, _HYP), rect=False,
        stride=stride, pad=0.0, prefix=colorstr(f"{split}: "), task="detect", data=cfg,
    )
    return build_dataloader(dataset, batch, workers, shuffle=True)


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm statistics stay as trained: small CPU batches would only add noise, and a smaller level's
    channels must not drift while a larger level's channels are grown."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, reference: nn.Module, loader: Any, device: torch.device) -> None:
    """Undo the shift pruning caused in every BatchNorm's input statistics, in the model's scale and shift.

    Both models see the same training batches; each BatchNorm's expected input becomes its stored statistics
    moved by the difference between the pruned model's measured ones and the dense `reference`'s, so the
    augmentation and the few images cancel out and an unpruned layer is left exactly as it was (measured
    directly, 96 COCO images moved the dense YOLOv5n's own statistics enough to cost 0.06 mAP50). The
    correction is folded into the weight and bias (running statistics untouched), so it is an ordinary
    change of shared weights, as fine-tuning is, and a pruned channel's zero scale and shift stay zero.
    """
    pairs = [(a, b) for a, b in zip(model.modules(), reference.modules(), strict=True) if isinstance(a, nn.BatchNorm2d)]
    saved = [(m, m.training, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for pair in pairs for m in pair]
    for m in (m for pair in pairs for m in pair):
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    for batch in loader:
        images = batch["img"].to(device).float() / 255
        model(images)
        reference(images)
    measured = {m: (m.running_mean.clone(), m.running_var.clone()) for pair in pairs for m in pair}
    for m, training, momentum, mean, var, tracked in saved:
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(tracked)
        m.momentum = momentum
        m.train(training)
    for bn, ref in pairs:
        (mean, var), (ref_mean, ref_var) = measured[bn], measured[ref]
        shifted_mean = bn.running_mean + mean - ref_mean
        shifted_std = (bn.running_var * (var + bn.eps) / (ref_var + bn.eps) + bn.eps).sqrt()
        bn.bias.add_(bn.weight * (bn.running_mean - shifted_mean) / shifted_std)
        bn.weight.mul_((bn.running_var + bn.eps).sqrt() / shifted_std)


def linear_warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Ramp the learning rate linearly up to its set value over `steps` batches, then hold it.

    Adam's first full-size steps on freshly pruned weights knock mAP50 down before it recovers (YOLOv5n at
    30 %: 0.37 -> 0.31 at lr 1e-4); warmed up over two epochs, it rises from the first epoch.
    """
    steps = max(1, steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / steps))


class WeightAverage:
    """An exponential moving average of the tensors a fine-tune trains: the weights it evaluates and keeps.

    On a hundred images each optimiser step is noisy and a step's best epoch is picked on 32 more; the
    average smooths the noise out of the weights being judged. It is updated with `lerp`, which leaves an
    entry that never moved exactly as it was, so frozen weights and pruned zeros stay bit for bit. The decay
    ramps up over `warmup` updates, as Ultralytics' ModelEMA does, so the first steps are not averaged away.
    """

    def __init__(self, params: Iterable[torch.Tensor], decay: float, warmup: int) -> None:
        self.params = list(params)
        self.average = [p.detach().clone() for p in self.params]
        self.decay, self.warmup, self.updates = decay, max(1, warmup), 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.warmup))
        for average, p in zip(self.average, self.params, strict=True):
            average.lerp_(p, 1 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block, the tensors hold their averages; their own values come back after."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            for p, average in zip(self.params, self.average, strict=True):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.params, own, strict=True):
                    p.copy_(value)


def train_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, loss: Loss,
                optimizer: torch.optim.Optimizer, *, device: torch.device, desc: str,
                also: Sequence[tuple[float, Callable[[torch.Tensor], Any]]] = (),
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                average: WeightAverage | None = None) -> float:
    """One pass over `loader`; returns the mean loss. `scheduler` and `average`, if given, step after every batch.

    `also`: further (weight, forward) pairs whose weighted losses on the same batch join the model's own,
    e.g. the full architecture over the same shared weights while a pruned one is fine-tuned.
    """
    model.train()
    freeze_batchnorm(model)
    total = 0.0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        images = batch["img"].to(device).float() / 255
        targets = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        value = loss(model, images, targets)
        for weight, forward in also:
            value = value + weight * loss(forward, images, targets)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update()
        total += float(value.detach())
    return total / max(1, len(loader))
