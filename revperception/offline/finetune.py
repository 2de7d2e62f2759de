"""Training data for the levels' own state: Ultralytics' augmented loading, label-free, frozen BatchNorm statistics."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_dataloader
from ultralytics.utils import DEFAULT_CFG, colorstr

from revperception.offline.evaluate import CachelessDataset, read_data

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
