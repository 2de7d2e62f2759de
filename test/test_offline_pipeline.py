"""The offline pipeline: a full level that is the original model, levels with their own state and input size,
honest splits in the report, and the CLI generated from its configuration."""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BIN, SharedPath, randomise_batchnorms, spread_class_biases, synthetic_dataset
from revperception.checkpoint import load_reversible, read_metadata
from revperception.models import load_model
from revperception.offline.allocation import used_parameters
from revperception.offline.config import ALLOCATIONS, PruneConfig
from revperception.offline.finetune import freeze_batchnorm, own_parameters, owned, train_level
from revperception.offline.masks import ChannelMasks, trainable_only
from revperception.offline.pipeline import allocate
from revperception.offline.state import PipelineState
from revperception.pruning import FULL, PRUNED, RANKINGS, find_groups
from revperception.runtime import ReversibleModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"), test=4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A YOLOv5n with real-looking BatchNorm statistics and distinct class scores, saved as users save theirs."""
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    randomise_batchnorms(model)
    spread_class_biases(model)
    path = tmp_path_factory.mktemp("weights") / "n.pt"
    torch.save({"model": model}, path)
    return path


@pytest.fixture(scope="module")
def run(data: Path, weights: Path, tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The whole pipeline through the CLI on a small model: two pruned levels, each at its own input size."""
    out = tmp_path_factory.mktemp("run") / "n.rvp.safetensors"
    proc = subprocess.run(
        [str(BIN / "revperception"), "prune", "--weights", str(weights), "--data", str(data), "--out", str(out),
         "--imgsz", "128", "--level-imgsz", "64", "96", "--levels", "2", "--sparsity", "0.2", "--round-to", "8",
         "--allocation", "flops", "--calibration", "4", "--batch", "4", "--epochs", "2", "--patience", "2",
         "--lr", "1e-2",
         "--front", "64", "128", "--latency-runs", "1", "--seed", "3"],
        capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.with_name("n.report.json").read_text()), proc


@torch.no_grad()
def test_the_full_level_computes_what_the_dense_model_computes(run, weights: Path) -> None:
    out, report, _ = run
    assert report["full_deviation"] <= 1e-5
    dense = load_model(str(weights)).model.eval()
    pruned = load_reversible(out)
    assert FULL not in pruned.private
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, private=pruned.private, fuse=False,
                            start_level=FULL)
    x = torch.rand(2, 3, 128, 96, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), dense(x)[0], rtol=1e-5, atol=1e-5)


def test_levels_carry_their_sparsity_input_size_and_own_state(run) -> None:
    out, report, _ = run
    pruned = load_reversible(out)
    assert pruned.levels.names == (PRUNED, "level1", FULL)
    assert pruned.levels.imgsz == {PRUNED: 64, "level1": 96, FULL: 128}
    levels = report["levels"]
    full = levels[FULL]["params"]
    assert 1 - levels[PRUNED]["params"] / full >= 0.2 > 1 - levels["level1"]["params"] / full >= 0.1
    assert levels[PRUNED]["flops"] < levels["level1"]["flops"] < levels[FULL]["flops"]
    for name in (PRUNED, "level1"):  # its own state is only what training changed and kept
        assert levels[name]["imgsz"] == pruned.levels.imgsz[name]
        epochs = levels[name]["epochs"]
        assert epochs[0]["epoch"] == 0 and levels[name]["val_map50"] == max(e["val_map50"] for e in epochs)
        own = pruned.private[name]
        assert any(key.endswith(".bn.running_mean") for key in own), "statistics re-estimated at the level's size"
        assert all(".bn." in key or key.endswith((".bias", ".conv.weight")) for key in own)


def test_the_report_judges_levels_on_the_test_split_beside_the_resolution_front(run) -> None:
    out, report, proc = run
    assert report["split"] == "test"
    assert set(report["front"]) == {"64", "128"}
    for entry in [*report["front"].values(), *report["levels"].values()]:
        assert entry["latency_ms"] > 0 and entry["flops"] > 0
    # the full level is the dense model at 128 px: the same cost and (to rounding) the same detections
    assert report["front"]["128"]["flops"] == report["levels"][FULL]["flops"]
    assert report["front"]["128"]["params"] == report["levels"][FULL]["params"]
    assert report["levels"][FULL]["map50"] == pytest.approx(report["front"]["128"]["map50"], abs=1e-3)
    assert (out.parent / "n_map_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "level pruned" in proc.stdout and "vs front" in proc.stdout
    assert read_metadata(out)["info"]["allocation"] == "flops"  # as asked on the command line


def test_a_levels_own_state_trains_while_shared_and_pruned_entries_stay_put() -> None:
    """What train_level optimises: BatchNorm shifts of live channels and the head's biases, nothing else."""
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    groups, _ = find_groups(model, torch.zeros(1, 3, 64, 64))
    masks = ChannelMasks(model, groups)
    keep = [torch.arange(g.size) < g.size // 2 for g in groups]
    masks.zero_pruned(keep)
    own = own_parameters(model, masks.parameter_masks(keep))
    assert not any(p is m.weight for p in own for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = copy.deepcopy(model.state_dict())
    model.train()
    freeze_batchnorm(model)  # as the pipeline trains: statistics stay put
    with trainable_only(model, own) as params:
        optimizer = torch.optim.Adam(params, lr=1e-2)
        for _ in range(3):
            out = model(torch.rand(2, 3, 64, 64))
            optimizer.zero_grad()
            sum(t.float().pow(2).mean() for t in (out["boxes"], out["scores"])).backward()
            optimizer.step()
    after = model.state_dict()
    names = {p: n for n, p in model.named_parameters()}
    moved = {n for n in before if before[n].is_floating_point() and not torch.equal(before[n], after[n])}
    assert moved and moved <= {names[p] for p in own}, "a shared weight moved"
    for p, mask in own.items():
        assert torch.equal(after[names[p]][~mask], before[names[p]][~mask]), "a pruned channel's term moved"


def test_the_phases_allocate_nested_levels_and_train_one_without_touching_the_shared_weights(
        data: Path, weights: Path, tmp_path: Path) -> None:
    """The public phases one by one: each level meets its share of the sparsity in whole blocks, smaller levels
    keep subsets of larger ones, and a level's training returns only entries it owns, leaving the model as it was."""
    cfg = PruneConfig(weights=str(weights), data=str(data), out=str(tmp_path / "p.rvp.safetensors"), imgsz=64,
                      levels=2, sparsity=0.3, calibration=4, batch=4, epochs=1, patience=1, front=[64])
    state = PipelineState.from_config(cfg)
    assert state.names == (PRUNED, "level1", FULL) and state.sizes == {PRUNED: 64, "level1": 64, FULL: 64}
    levels = allocate(state)
    full = [g.size for g in state.groups]
    assert list(levels.keep[FULL]) == full
    for small, large in ((PRUNED, "level1"), ("level1", FULL)):
        assert all(a <= b for a, b in zip(levels.keep[small], levels.keep[large], strict=True))
    assert all(k % 8 == 0 or k == size for k, size in zip(levels.keep[PRUNED], full, strict=True))
    masks = ChannelMasks(state.model, state.groups)
    total = sum(p.numel() for p in state.model.parameters())
    for name, goal in ((PRUNED, 0.3), ("level1", 0.15)):
        alive = [torch.arange(g.size) < k for g, k in zip(state.groups, levels.keep[name], strict=True)]
        assert 1 - used_parameters(masks, state.model, alive) / total >= goal
    before = copy.deepcopy(state.model.state_dict())
    trained = train_level(state.model, state.teacher, state.groups, levels.keep[PRUNED], imgsz=64, cfg=cfg,
                          stride=state.loaded.stride, device=state.device)
    after = state.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "training a level moved the shared weights"
    assert trained.private and all(owned(k, state.model) for k in trained.private)
    assert all(not torch.equal(v, before[k]) for k, v in trained.private.items())
    assert [e["epoch"] for e in trained.record["epochs"]] == [0, 1] and trained.record["imgsz"] == 64


def test_the_cli_is_generated_from_the_config() -> None:
    """Every PruneConfig field is a `prune` option with its default and help; choices come from the registry."""
    proc = subprocess.run([str(BIN / "revperception"), "prune", "--help"], capture_output=True, text=True,
                          timeout=120, check=True)
    text = " ".join(proc.stdout.split())
    for f in fields(PruneConfig):
        assert f"--{f.name.replace('_', '-')}" in text
    assert "{" + ",".join(ALLOCATIONS) + "}" in text and "--ranking {" + ",".join(RANKINGS) + "}" in text
    with pytest.raises(ValueError, match="one input size per pruned level"):
        PruneConfig(weights="w", data="d", out="o.rvp.safetensors", levels=2, level_imgsz=[320])
    with pytest.raises(ValueError, match="unknown allocation"):
        PruneConfig(weights="w", data="d", out="o.rvp.safetensors", allocation="random")


def test_eval_cli_uses_a_levels_own_input_size_and_agrees_with_the_report(run, data: Path, tmp_path: Path) -> None:
    out, report, _ = run
    result = tmp_path / "eval.json"
    proc = subprocess.run([str(BIN / "revperception"), "eval", "--checkpoint", str(out), "--level", PRUNED,
                           "--data", str(data), "--split", "test", "--json", str(result)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = json.loads(result.read_text())
    assert values["level"] == PRUNED and values["imgsz"] == 64 and values["images"] == 4
    assert (values["map50"], values["map50_95"]) == pytest.approx(
        (report["levels"][PRUNED]["map50"], report["levels"][PRUNED]["map50_95"]), abs=1e-6)
    bad = subprocess.run([str(BIN / "revperception"), "eval", "--checkpoint", str(out), "--level", "tiny",
                          "--data", str(data)], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1 and "unknown level 'tiny'" in bad.stderr


def test_eval_cli_gives_the_same_map_on_every_backend_at_fp32(run, data: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    out, _, _ = run
    maps = {}
    for backend in ("torch", "openvino"):
        result = tmp_path / f"{backend}.json"
        proc = subprocess.run([str(BIN / "revperception"), "eval", "--checkpoint", str(out), "--level", PRUNED,
                               "--data", str(data), "--split", "test", "--backend", backend, "--json", str(result)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        values = json.loads(result.read_text())
        assert values["backend"] == backend and values["precision"] == "fp32" and values["imgsz"] == 64
        maps[backend] = (values["map50"], values["map50_95"])
    np.testing.assert_allclose(maps["openvino"], maps["torch"], atol=1e-3)


@torch.no_grad()
def test_the_release_models_full_level_is_the_release_model(tmp_path: Path, shared: SharedPath) -> None:
    """On the real YOLOv5n release checkpoint, the pruned checkpoint's full level computes what it computes."""
    release = shared("models/yolov5n.pt")
    out = tmp_path / "r.rvp.safetensors"
    proc = subprocess.run([str(BIN / "revperception"), "prune", "--weights", str(release), "--no-finetune",
                           "--filter-fraction", "0.3", "--level-imgsz", "320", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pruned = load_reversible(out)
    dense = load_model(str(release)).model.float().eval()
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, start_level=FULL)
    x = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    expected = dense(x)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-4)
    assert pruned.levels.imgsz == {PRUNED: 320}


def test_batchnorm_statistics_are_re_estimated_only_where_pruning_changed_their_input(data: Path) -> None:
    from revperception.offline.finetune import reestimate_batchnorm, train_loader

    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    randomise_batchnorms(model)
    dense = copy.deepcopy(model)
    groups, _ = find_groups(model, torch.zeros(1, 3, 64, 64))
    late = next(i for i, g in enumerate(groups) if g.name == "model.8.cv2.conv")  # deep in the backbone
    keep = [torch.arange(g.size) < (g.size // 2 if i == late else g.size) for i, g in enumerate(groups)]
    ChannelMasks(model, groups).zero_pruned(keep)
    before = copy.deepcopy(model.state_dict())
    reestimate_batchnorm(model, dense, train_loader(data, imgsz=64, batch=4), torch.device("cpu"))
    after = model.state_dict()
    stats = [k for k in before if k.endswith("running_mean")]
    unchanged = {k.removesuffix(".bn.running_mean") for k in stats if torch.equal(before[k], after[k])}
    assert "model.0" in unchanged and "model.7" in unchanged, "layers before the pruned one keep their statistics"
    assert "model.9.cv1" not in unchanged and "model.23.cv3" not in unchanged, "layers after it are re-measured"
