"""Least-squares reconstruction: a pruned model's convs refitted to the dense outputs, pruned entries held at zero."""

from __future__ import annotations

import copy

import torch

from conftest import randomise_batchnorms
from revperception.models import load_model
from revperception.offline.masks import ChannelMasks
from revperception.offline.reconstruct import forward_order, reconstruct
from revperception.pruning import find_groups


def _dense_and_masks(fraction_kept: float) -> tuple[torch.nn.Module, torch.nn.Module, ChannelMasks, list]:
    torch.manual_seed(0)
    dense = load_model("yolov5n.yaml").model
    randomise_batchnorms(dense)
    groups, _ = find_groups(dense, torch.zeros(1, 3, 64, 64))
    model = copy.deepcopy(dense)
    masks = ChannelMasks(model, groups)
    keep = [torch.arange(g.size) < max(1, round(g.size * fraction_kept)) for g in groups]
    return dense.eval(), model.eval(), masks, keep


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)[0]


def test_reconstruction_brings_a_pruned_model_back_towards_the_dense_outputs() -> None:
    dense, model, masks, keep = _dense_and_masks(0.75)
    masks.zero_pruned(keep)
    used = masks.parameter_masks(keep)
    batches = [torch.rand(4, 3, 128, 128) for _ in range(2)]
    images = torch.cat(batches)
    statistics = {name: b.clone() for name, b in model.named_buffers()}
    before = (_outputs(model, images) - _outputs(dense, images)).pow(2).mean()

    refitted = reconstruct(model, dense, used, batches)

    after = (_outputs(model, images) - _outputs(dense, images)).pow(2).mean()
    assert refitted == sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight in used)
    assert after < 0.5 * before, f"output error {float(before):.4g} -> {float(after):.4g}"
    for p, mask in used.items():
        assert not p[~mask.expand_as(p)].any(), "a pruned entry moved off zero"
    for name, b in model.named_buffers():
        assert torch.equal(b, statistics[name]), f"{name}: stored statistics must not move"


def test_reconstruction_leaves_an_unpruned_model_computing_what_it_did() -> None:
    dense, model, masks, keep = _dense_and_masks(1.0)
    batches = [torch.rand(4, 3, 128, 128)]
    assert reconstruct(model, dense, masks.parameter_masks(keep), batches) > 0
    torch.testing.assert_close(_outputs(model, batches[0]), _outputs(dense, batches[0]), rtol=1e-4, atol=1e-4)


def test_convs_are_refitted_in_the_order_the_forward_pass_runs_them() -> None:
    dense, *_ = _dense_and_masks(1.0)
    order = forward_order(dense, torch.rand(1, 3, 64, 64))
    c3 = dense.model[2]  # C3: cv1 -> bottlenecks -> cv2 -> cv3 at run time; cv3 is registered before them
    assert order.index(c3.m[0].cv1.conv) < order.index(c3.cv3.conv)
    assert len(order) == sum(1 for m in dense.modules() if isinstance(m, torch.nn.Conv2d))
