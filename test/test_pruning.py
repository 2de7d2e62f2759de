"""Pruning structure on a real YOLOv5: dependency groups, ranking, nested levels, prefix permutation, encodings."""

from __future__ import annotations

import struct

import pytest
import torch

from conftest import randomise_batchnorms
from revperception.models import load_model
from revperception.pruning import (
    FULL,
    PRUNED,
    Levels,
    encode_full,
    encode_level,
    find_groups,
    permute_to_prefix,
    plan_levels,
    rank_channels,
)
from revperception.pruning.structure import detection_outputs


@pytest.fixture(scope="module")
def yolov5n():
    torch.manual_seed(0)
    loaded = load_model("yolov5n.yaml")
    randomise_batchnorms(loaded.model)
    groups, tp_groups = find_groups(loaded.model, torch.zeros(1, 3, 64, 64))
    return loaded, groups, tp_groups


def _members(groups, module: str, kind: str):
    return [(g, m) for g in groups for m in g.members if m.module == module and m.kind == kind]


def test_groups_couple_residuals_concats_and_sppf(yolov5n) -> None:
    _, groups, _ = yolov5n
    # C3 residual adds: cv1's output and every bottleneck's cv2 output are one group.
    (group, _), = _members(groups, "model.2.cv1.conv", "out")
    assert {"model.2.m.0.cv2.conv", "model.2.cv1.bn"} <= {m.module for m in group.members}
    # A concat consumer takes two groups at different offsets (layer 13 concatenates 10 and 6).
    offsets = sorted(m.offsets for _, m in _members(groups, "model.13.cv1.conv", "in"))
    assert offsets == [(0,), (group_size := _members(groups, "model.10.conv", "out")[0][0].size,)]
    assert group_size == 128
    # SPPF concatenates the same channels four times.
    (_, sppf), = _members(groups, "model.9.cv2.conv", "in")
    assert len(sppf.offsets) == 4


def test_detection_outputs_are_never_pruned(yolov5n) -> None:
    loaded, groups, _ = yolov5n
    names = {module: name for name, module in loaded.model.named_modules()}
    outputs = {names[m] for m in detection_outputs(loaded.model)}
    assert len(outputs) == 7  # 3 box + 3 class convs + the DFL conv of the anchor-free head
    assert not {m.module for g in groups for m in g.members if m.kind == "out"} & outputs


def test_l1_ranking_puts_heavier_filters_first(yolov5n) -> None:
    _, groups, tp_groups = yolov5n
    orders = rank_channels(tp_groups, "l1")
    index = next(i for i, g in enumerate(groups) if g.name == "model.0.conv")
    assert sorted(orders[index].tolist()) == list(range(groups[index].size))
    assert orders[index].tolist() != list(range(groups[index].size)), "random weights are not already sorted"
    with pytest.raises(ValueError, match="unknown ranking"):
        rank_channels(tp_groups, "l3")


def test_permutation_keeps_the_function() -> None:
    torch.manual_seed(1)
    loaded = load_model("yolov5n.yaml")
    randomise_batchnorms(loaded.model)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        before = loaded.model(x)[0]
        groups, tp_groups = find_groups(loaded.model, torch.zeros(1, 3, 64, 64))
        permute_to_prefix(loaded.model, groups, rank_channels(tp_groups, "l1"))
        after = loaded.model(x)[0]
    assert not torch.equal(loaded.model.model[0].conv.weight, load_model("yolov5n.yaml").model.model[0].conv.weight)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))


def test_levels_are_nested_and_encoded_compactly(yolov5n) -> None:
    _, groups, _ = yolov5n
    levels = plan_levels(groups, [0.36, 0.18])
    assert levels.names == (PRUNED, "level1", FULL)
    for g, group in enumerate(groups):
        assert 1 <= levels.keep[PRUNED][g] <= levels.keep["level1"][g] <= levels.keep[FULL][g] == group.size
    assert levels.keep[PRUNED][0] == groups[0].size - round(groups[0].size * 0.36)
    full = encode_full(groups)
    assert len(full) == 2 + 2 * len(groups)
    assert struct.unpack_from("<H", full)[0] == len(groups)
    pruned = encode_level(groups, levels.keep[PRUNED])
    changed = sum(k != g.size for k, g in zip(levels.keep[PRUNED], groups, strict=True))
    assert len(pruned) == 4 * changed and encode_level(groups, levels.keep[FULL]) == b""


def test_levels_refuse_what_cannot_be_nested(yolov5n) -> None:
    _, groups, _ = yolov5n
    with pytest.raises(ValueError, match="fractions"):
        plan_levels(groups, [1.2])
    keep = plan_levels(groups, [0.5]).keep
    with pytest.raises(ValueError, match="not nested"):
        Levels(names=(PRUNED, "level1", FULL), keep={PRUNED: keep[FULL], "level1": keep[PRUNED], FULL: keep[FULL]})
