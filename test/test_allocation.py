"""Sensitivity allocation: a step frees its parameter budget where the outputs change least."""

from __future__ import annotations

import copy

import torch

from conftest import randomise_batchnorms
from revperception.models import load_model
from revperception.offline.allocation import SensitivityAllocation, used_parameters
from revperception.offline.finetune import freeze_batchnorm
from revperception.offline.losses import head_distance, raw_outputs
from revperception.offline.masks import ChannelMasks
from revperception.pruning import find_groups, rank_channels

CRITICAL = "model.6.cv3.conv"  # frees the most parameters per block: first to go, unless it matters


def test_a_step_meets_its_budget_and_spares_the_group_that_matters() -> None:
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    randomise_batchnorms(model)
    groups, tp_groups = find_groups(model, torch.zeros(1, 3, 64, 64))
    critical = next(i for i, g in enumerate(groups) if g.name == CRITICAL)
    critical_bn = dict(model.named_modules())[CRITICAL.replace(".conv", ".bn")]
    teacher = copy.deepcopy(model).train()
    freeze_batchnorm(teacher)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        target = raw_outputs(teacher(images))

    @torch.no_grad()
    def distance(m: torch.nn.Module) -> float:
        """The real output distance, plus a large cost for any lost channel of one group: its blocks free the
        most parameters, so only their damage can keep the allocator away from them."""
        m.train()
        freeze_batchnorm(m)
        return float(head_distance(m(images), target)) + 1e3 * int((critical_bn.weight == 0).sum())

    masks = ChannelMasks(model, groups)
    before = copy.deepcopy(model.state_dict())
    alive = masks.full()
    used = used_parameters(masks, model, alive)
    budget = used // 10
    kept = SensitivityAllocation(model, masks, distance, round_to=8).targets(alive, rank_channels(tp_groups),
                                                                             budget)
    smaller = [torch.arange(g.size) < k for g, k in zip(groups, kept, strict=True)]
    assert used - used_parameters(masks, model, smaller) >= budget
    assert kept[critical] == groups[critical].size, "the group whose channels drive the outputs was pruned"
    assert sum(k < g.size for g, k in zip(groups, kept, strict=True)) >= 2
    assert all(k % 8 == 0 and k >= 8 for k in kept)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "scoring left the model changed"
