"""The reversible runtime's invariants, each on a real YOLOv5n with non-trivial weights."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from conftest import randomise_batchnorms, spread_class_biases
from revperception.models import Detector, load_model
from revperception.pruning import FULL, PRUNED
from revperception.pruning.prune import PrunedModel, prune_to_levels
from revperception.runtime import ReversibleDetector, ReversibleModel

X = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def pruned() -> PrunedModel:
    torch.manual_seed(0)
    loaded = load_model("yolov5n.yaml")
    randomise_batchnorms(loaded.model)
    spread_class_biases(loaded.model)
    return prune_to_levels(loaded, [0.4, 0.2], imgsz=128)


def reversible(pruned: PrunedModel, **options) -> ReversibleModel:
    return ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, pruned.levels, **options)


def zeroed(pruned: PrunedModel, level: str) -> torch.nn.Module:
    """The dense model with a level's pruned channels silenced: conv filters, BatchNorm scale and shift."""
    model = copy.deepcopy(pruned.model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group, keep in zip(pruned.groups, pruned.levels.keep[level], strict=True):
            for member in group.members:
                module = modules[member.module]
                if member.kind == "out":
                    tensors = [module.weight] if isinstance(module, torch.nn.Conv2d) else [module.weight, module.bias]
                    for tensor in tensors:
                        tensor[keep:] = 0
    return model


@torch.no_grad()
def test_full_level_equals_the_dense_model(pruned) -> None:
    model = reversible(pruned, fuse=False, start_level=FULL)
    torch.testing.assert_close(model(X), pruned.model(X)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", [PRUNED, "level1"])
@torch.no_grad()
def test_pruned_levels_equal_the_dense_model_with_channels_zeroed(pruned, level: str) -> None:
    model = reversible(pruned, fuse=False, start_level=level)
    expected = zeroed(pruned, level)(X)[0]
    torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert not torch.allclose(model(X), pruned.model(X)[0], rtol=1e-3), "pruning changed nothing"


@torch.no_grad()
def test_fused_runtime_matches_the_unfused_one(pruned) -> None:
    for level in pruned.levels.names:
        fused = reversible(pruned, fuse=True, start_level=level)(X)
        plain = reversible(pruned, fuse=False, start_level=level)(X)
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


@torch.no_grad()
def test_a_thousand_switches_leave_outputs_bit_identical(pruned) -> None:
    model = reversible(pruned, start_level=FULL)
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    reference = {level: model.run(X) for level in (FULL, PRUNED) if not model.set_level(level)}
    for i in range(1000):
        model.set_level(PRUNED if i % 2 else FULL)
    assert [p.untyped_storage().data_ptr() for p in model.parameters()] == storages, "weights were re-allocated"
    for level in (FULL, PRUNED):
        model.set_level(level)
        out, ran = model.run(X)
        assert ran == level and torch.equal(out, reference[level][0])


def test_resident_bytes_stay_within_two_percent_of_dense(pruned) -> None:
    from revperception.bench import _storage_bytes

    dense = copy.deepcopy(pruned.model)
    model = reversible(pruned, fuse=False)
    assert _storage_bytes(model) <= 1.02 * _storage_bytes(dense)


@torch.no_grad()
def test_no_inference_ever_sees_half_a_switch(pruned) -> None:
    model = reversible(pruned, start_level=FULL)
    reference = {}
    for level in (FULL, PRUNED):
        model.set_level(level)
        reference[level] = model(X)
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            model.set_level(PRUNED if i % 2 else FULL)
            i += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        seen = set()
        for _ in range(30):
            out, level = model.run(X)
            assert torch.equal(out, reference[level]), f"a pass mixed levels (reported {level})"
            seen.add(level)
    finally:
        stop.set()
        flipper.join()
    assert seen == {FULL, PRUNED}


def test_detector_levels_reverse_and_errors(pruned) -> None:
    detector = ReversibleDetector(reversible(pruned), pruned.names, stride=pruned.stride, imgsz=128, conf=0.0)
    assert detector.levels == (PRUNED, "level1", FULL) and detector.level == PRUNED
    assert detector.reverse() == FULL and detector.reverse() == PRUNED
    detector.set_level("level1")
    assert detector.reverse() == FULL
    with pytest.raises(KeyError, match="unknown level 'tiny'"):
        detector.set_level("tiny")
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    before = detector.predict(image)
    assert before.level == FULL
    detector.warm_up((100, 120))  # runs every level, then puts the requested one back, weights untouched
    after = detector.predict(image)
    assert detector.level == after.level == FULL
    np.testing.assert_array_equal(after.boxes, before.boxes)


def test_full_level_detections_equal_the_dense_detector(pruned) -> None:
    image = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    dense = Detector(copy.deepcopy(pruned.model), pruned.names, stride=pruned.stride, imgsz=128, conf=0.05)
    rev = ReversibleDetector(reversible(pruned, fuse=False, start_level=FULL), pruned.names, stride=pruned.stride,
                             imgsz=128, conf=0.05)
    a, b = dense.predict(image), rev.predict(image)
    assert len(a) > 0
    np.testing.assert_allclose(b.boxes, a.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(b.class_ids, a.class_ids)
