"""Sensitivity allocation: channels go where the outputs change least per parameter or per FLOP saved."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import randomise_batchnorms
from revperception.models import load_model
from revperception.offline.allocation import ConvFlops, SensitivityAllocation, used_parameters
from revperception.offline.finetune import freeze_batchnorm
from revperception.offline.losses import head_distance, raw_outputs
from revperception.offline.masks import ChannelMasks
from revperception.pruning import find_groups, rank_channels

CRITICAL = "model.6.cv3.conv"  # frees the most parameters per block: first to go, unless it matters


@pytest.mark.slow
def test_pruning_by_flops_reaches_its_goal_and_spares_the_group_that_matters() -> None:
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
    total = used_parameters(masks, model, alive)
    flops = ConvFlops(model, masks, 64)
    allocator = SensitivityAllocation(model, masks, distance, round_to=8, cost=flops)
    smaller = allocator.prune_until(alive, rank_channels(tp_groups),
                                    lambda a: used_parameters(masks, model, a) <= 0.9 * total)
    kept = [int(a.sum()) for a in smaller]
    assert used_parameters(masks, model, smaller) <= 0.9 * total
    assert flops(smaller) < flops(alive)
    assert kept[critical] == groups[critical].size, "the group whose channels drive the outputs was pruned"
    assert sum(k < g.size for g, k in zip(groups, kept, strict=True)) >= 2
    assert all(k % 8 == 0 and k >= 8 for k in kept)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "scoring left the model changed"


def test_conv_flops_count_what_the_runtime_runs() -> None:
    """ConvFlops of a level equals the conv FLOPs torch counts on the sliced runtime (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from revperception.pruning.prune import prune_to_levels
    from revperception.runtime import ReversibleModel

    torch.manual_seed(0)
    pruned = prune_to_levels(load_model("yolov5n.yaml"), [0.5], imgsz=64)
    masks = ChannelMasks(pruned.model, pruned.groups)
    keep = [torch.arange(g.size) < k for g, k in zip(pruned.groups, pruned.levels.keep["pruned"], strict=True)]
    counted = ConvFlops(pruned.model, masks, 64)(keep)
    runtime = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, fuse=True,
                              channels_last=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        runtime(torch.zeros(1, 3, 64, 64))
    assert 2 * counted == counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
