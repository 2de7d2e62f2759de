"""The training loop shared by fine-tuning down and up: Ultralytics data loading, frozen BatchNorm statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def train_loader(data: str | Path, *, imgsz: int, batch: int, stride: int = 32, workers: int = 0,
                 split: str = "train") -> torch.utils.data.DataLoader:
    """Shuffled, augmented batches of the `split` images (labels optional: distillation needs none)."""
    cfg, paths = read_data(data, split)
    dataset = CachelessDataset(
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


def linear_warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Ramp the learning rate linearly up to its set value over `steps` batches, then hold it.

    Adam's first full-size steps on freshly pruned weights knock mAP50 down before it recovers (YOLOv5n at
    30 %: 0.37 -> 0.31 at lr 1e-4); warmed up over two epochs, it rises from the first epoch.
    """
    steps = max(1, steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / steps))


def train_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, loss: Loss,
                optimizer: torch.optim.Optimizer, *, device: torch.device, desc: str,
                also: Sequence[tuple[float, Callable[[torch.Tensor], Any]]] = (),
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    """One pass over `loader`; returns the mean loss. `scheduler`, if given, steps after every batch.

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
        total += float(value.detach())
    return total / max(1, len(loader))
