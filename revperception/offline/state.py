"""What every phase of a pruning run reads: the user's model and its frozen copy (the teacher), its channel groups
ranked once, the levels' names and input sizes, and the report the phases fill in."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from ultralytics.utils.torch_utils import init_seeds

from revperception.models import LoadedModel, load_model
from revperception.offline.config import PruneConfig
from revperception.offline.finetune import freeze_batchnorm
from revperception.pruning import FULL, ChannelGroup, find_groups, rank_channels
from revperception.pruning.levels import level_names


@dataclass
class PipelineState:
    """The inputs every phase shares. `model` is the one the checkpoint is written from (its channels get permuted
    so every level keeps a prefix); `teacher` stays the user's model as loaded."""

    cfg: PruneConfig
    device: torch.device
    loaded: LoadedModel
    model: nn.Module
    teacher: nn.Module
    groups: list[ChannelGroup]
    orders: list[torch.Tensor]
    sizes: dict[str, int]  # input size per level, pruned ones first, FULL last
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: PruneConfig) -> PipelineState:
        """Load `cfg.weights`, trace and rank its channel groups, check the input sizes against its stride."""
        init_seeds(cfg.seed)  # python's and numpy's generators too: Ultralytics' augmentations draw from them
        device = torch.device(cfg.device)
        loaded = load_model(cfg.weights)
        model = loaded.model.to(device).eval()
        teacher = copy.deepcopy(model).requires_grad_(False)
        teacher.train()
        freeze_batchnorm(teacher)  # train-mode head (raw outputs), eval-mode statistics
        example = torch.zeros(1, 3, 2 * loaded.stride, 2 * loaded.stride, device=device)
        groups, tp_groups = find_groups(model, example)
        names = level_names(cfg.levels)
        pruned_sizes = cfg.level_imgsz or [cfg.imgsz] * cfg.levels
        sizes = {**dict(zip(names[:-1], pruned_sizes, strict=True)), FULL: cfg.imgsz}
        if any(size % loaded.stride for size in [*sizes.values(), *cfg.front]):
            raise ValueError(f"input sizes must be multiples of the model's stride {loaded.stride}: "
                             f"levels {list(sizes.values())}, front {cfg.front}")
        report = {"settings": asdict(cfg), "levels": {}, "front": {}, "timing": {}}
        return cls(cfg=cfg, device=device, loaded=loaded, model=model, teacher=teacher, groups=groups,
                   orders=rank_channels(tp_groups, "l1"), sizes=sizes, report=report)

    @property
    def names(self) -> tuple[str, ...]:
        """Level names, smallest first, FULL last."""
        return tuple(self.sizes)

    @property
    def pruned_names(self) -> tuple[str, ...]:
        return self.names[:-1]
