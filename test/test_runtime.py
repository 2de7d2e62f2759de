"""The reversible runtime's invariants, each on a real YOLOv5n with non-trivial weights."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import randomise_batchnorms, spread_class_biases
from revperception.detector import ReversibleDetector
from revperception.models import Detector, load_model
from revperception.pruning import FULL, PRUNED
from revperception.pruning.prune import PrunedModel, prune_to_levels
from revperception.runtime import ReversibleModel

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
    from revperception.measure import storage_bytes

    dense = copy.deepcopy(pruned.model)
    model = reversible(pruned, fuse=False)
    assert storage_bytes(model) <= 1.02 * storage_bytes(dense)


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


def own_state(pruned: PrunedModel, seed: int) -> dict[str, torch.Tensor]:
    """A level's own BatchNorm terms, head biases and two conv weights, each visibly different from the shared ones."""
    generator = torch.Generator().manual_seed(seed)
    own = {}
    for name, tensor in pruned.model.state_dict().items():
        if ".bn." in name and not name.endswith("num_batches_tracked"):
            noise = torch.rand(tensor.shape, generator=generator)
            own[name] = tensor * (0.5 + noise) if "var" in name or "weight" in name else tensor + noise - 0.5
        elif name.startswith("model.24.") and name.endswith(".bias"):  # the head's output convs
            own[name] = tensor + torch.rand(tensor.shape, generator=generator) - 0.5
        elif name in ("model.2.cv1.conv.weight", "model.13.m.0.cv2.conv.weight"):  # weights of its own, too
            own[name] = tensor * (0.5 + torch.rand(tensor.shape, generator=generator))
    return own


def with_own_state(model: torch.nn.Module, own: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` with `own` loaded over its shared values: what a level with its own state must compute."""
    model = copy.deepcopy(model)
    model.load_state_dict({**model.state_dict(), **own})
    return model


@pytest.mark.parametrize("fuse", [False, True])
@torch.no_grad()
def test_a_levels_own_state_changes_that_level_and_never_the_full_one(pruned, fuse: bool) -> None:
    private = {PRUNED: own_state(pruned, 1), "level1": own_state(pruned, 2)}
    model = reversible(pruned, fuse=fuse, private=private, start_level=FULL)
    plain = reversible(pruned, fuse=fuse, start_level=FULL)
    assert torch.equal(model(X), plain(X)), "a level's own state moved what the full level computes"
    for level in (PRUNED, "level1"):
        model.set_level(level)
        expected = zeroed(replace(pruned, model=with_own_state(pruned.model, private[level])), level)(X)[0]
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        plain.set_level(level)
        assert not torch.allclose(model(X), plain(X), rtol=1e-3), "the level's own state changed nothing"


@pytest.mark.parametrize("fuse", [False, True])
@torch.no_grad()
def test_every_level_with_its_own_state_runs_at_bf16_close_to_fp32(pruned, fuse: bool) -> None:
    private = {PRUNED: own_state(pruned, 1), "level1": own_state(pruned, 2)}
    exact = reversible(pruned, fuse=fuse, private=private)
    bf16 = reversible(pruned, fuse=fuse, private=private, precision="bf16")
    for level in pruned.levels.names:
        exact.set_level(level)
        bf16.set_level(level)
        want, got = exact(X), bf16(X)
        boxes = got[:, :4]  # decoded in fp32 by the head, so not all on bf16's grid (a bf16 decode would round them)
        assert not torch.equal(boxes.bfloat16().float(), boxes), level
        assert float((got - want).abs().mean() / want.abs().mean()) < 0.02, level


def test_own_state_for_an_unknown_level_is_refused(pruned) -> None:
    with pytest.raises(ValueError, match="unknown levels"):
        reversible(pruned, private={"tiny": own_state(pruned, 1)})


def test_each_level_runs_at_its_own_input_size_and_the_switch_stays_one_assignment(pruned) -> None:
    levels = replace(pruned.levels, imgsz={PRUNED: 64, "level1": 96})
    model = ReversibleModel(copy.deepcopy(pruned.model), pruned.groups, levels)
    detector = ReversibleDetector(model, pruned.names, stride=pruned.stride, sizes={PRUNED: 64, "level1": 96,
                                                                                    FULL: 128}, conf=0.0)
    seen: dict[str, tuple[int, ...]] = {}
    original = model.run

    def spy(x: torch.Tensor, index: int | None = None) -> tuple[torch.Tensor, str]:
        out, level = original(x, index)
        seen[level] = tuple(x.shape[2:])
        return out, level

    model.run = spy  # observes the input each level is given; the real forward pass still runs
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    for level in (PRUNED, "level1", FULL, PRUNED):
        requested = model.__dict__.copy()
        detector.set_level(level)
        assert {k: v for k, v in model.__dict__.items() if k != "_requested"} == \
            {k: v for k, v in requested.items() if k != "_requested"}, "a switch changed more than the level index"
        assert detector.predict(image).level == level
    assert seen == {PRUNED: (64, 64), "level1": (96, 96), FULL: (128, 128)}
    fixed = ReversibleDetector(model, pruned.names, stride=pruned.stride, imgsz=96, sizes={PRUNED: 64}, conf=0.0)
    assert fixed.sizes == (96, 96, 96), "an explicit imgsz runs every level at it"


@torch.no_grad()
def test_a_levels_own_state_and_input_size_survive_save_and_load_with_the_integrity_checks(pruned, tmp_path) -> None:
    from revperception.checkpoint import (
        CheckpointCorruptError,
        CheckpointTamperedError,
        load_reversible,
        save_reversible,
    )

    private = {PRUNED: own_state(pruned, 1)}
    original = replace(pruned, model=copy.deepcopy(pruned.model), private=private,
                       levels=replace(pruned.levels, imgsz={PRUNED: 96}))
    path = tmp_path / "own.rvp.safetensors"
    save_reversible(path, original)
    loaded = load_reversible(path)
    assert loaded.levels.imgsz == {PRUNED: 96} and loaded.levels.size(FULL, loaded.imgsz) == 128
    assert loaded.private.keys() == {PRUNED} and loaded.private[PRUNED].keys() == private[PRUNED].keys()
    for name, tensor in private[PRUNED].items():
        assert torch.equal(loaded.private[PRUNED][name], tensor)
    for level in pruned.levels.names:
        a = ReversibleModel(loaded.model, loaded.groups, loaded.levels, private=loaded.private, start_level=level)
        b = reversible(original, private=private, start_level=level)
        assert torch.equal(a(X), b(X))
        loaded = load_reversible(path)  # the reversible model took the last one over

    data = bytearray(path.read_bytes())  # the level's own tensors are covered by the weights hash
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    key = next(k for k in header if k.startswith("level/pruned/"))
    data[8 + length + header[key]["data_offsets"][0]] ^= 0xFF
    (tmp_path / "tampered.rvp.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointTamperedError):
        load_reversible(tmp_path / "tampered.rvp.safetensors")

    stray = replace(original, private={PRUNED: {"model.0.conv.bias": torch.zeros(16)}})  # no such model entry
    save_reversible(tmp_path / "stray.rvp.safetensors", stray)
    with pytest.raises(CheckpointCorruptError, match="matches no level below full"):
        load_reversible(tmp_path / "stray.rvp.safetensors")
