"""Fine-tuning down and up: masks that hold, levels that keep their function, resumable runs, the CLI."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import BIN, randomise_batchnorms, shared_path, synthetic_dataset
from revperception.checkpoint import load_reversible, read_metadata
from revperception.models import load_model
from revperception.offline.finetune import WeightAverage, freeze_batchnorm, linear_warmup, recalibrate_batchnorm
from revperception.offline.losses import distillation, head_distance
from revperception.offline.masks import ChannelMasks, trainable_only, with_values
from revperception.offline.pipeline import NEVER, Pipeline, PruneConfig
from revperception.pruning import FULL, PRUNED, find_groups


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


def _half_pruned() -> tuple[torch.nn.Module, dict[torch.nn.Parameter, torch.Tensor], torch.nn.Parameter]:
    """A YOLOv5n with half of every group's channels pruned, its parameter masks and its first conv weight."""
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    groups, _ = find_groups(model, torch.zeros(1, 3, 64, 64))
    masks = ChannelMasks(model, groups)
    keep = [torch.arange(g.size) < g.size // 2 for g in groups]
    masks.zero_pruned(keep)
    used = masks.parameter_masks(keep)
    return model, used, next(p for p in used if p.dim() == 4)


def _train(model: torch.nn.Module, masks: dict[torch.nn.Parameter, torch.Tensor], steps: int,
           after_step: Callable[[], None] = lambda: None) -> None:
    """A few Adam steps on random images, only the entries `masks` marks trainable."""
    model.train()
    with trainable_only(model, masks) as params:
        optimizer = torch.optim.Adam(params, lr=1e-2)
        for _ in range(steps):
            out = model(torch.rand(2, 3, 64, 64))
            optimizer.zero_grad()
            sum(t.float().pow(2).mean() for t in (out["boxes"], out["scores"])).backward()
            optimizer.step()
            after_step()


def test_masked_training_holds_pruned_and_frozen_entries_exactly() -> None:
    model, used, first = _half_pruned()
    grow = {p: m & ~m for p, m in used.items()}  # nothing may move ...
    grow[first] = used[first]  # ... except the live entries of one conv weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = [p.requires_grad for p in model.parameters()]
    _train(model, grow, 3)
    for name, p in model.named_parameters():
        if p is first:
            pruned = ~used[p].expand_as(p)
            assert pruned.any() and not p[pruned].any(), "a pruned entry moved off zero"
            assert not torch.equal(p, before[name]), "the live entries did not train"
        else:
            assert torch.equal(p, before[name]), f"{name} moved while frozen"
    assert [p.requires_grad for p in model.parameters()] == flags, "trainable_only must restore requires_grad"


def test_the_weight_average_holds_pruned_and_frozen_entries_and_gives_the_model_back() -> None:
    model, used, first = _half_pruned()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    average = WeightAverage(model.parameters(), decay=0.9, warmup=1)
    _train(model, {first: used[first]}, 4, after_step=average.update)
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    with average.applied():
        for name, p in model.named_parameters():
            if p is first:
                live = used[p].expand_as(p)
                assert not p[~live].any(), "a pruned entry of the average moved off zero"
                assert not torch.equal(p[live], start[name][live]), "the average did not follow training"
                assert not torch.equal(p[live], trained[name][live]), "the average is just the latest weights"
            else:
                assert torch.equal(p, start[name]), f"the average of frozen {name} is not bit-identical"
    for name, p in model.named_parameters():
        assert torch.equal(p, trained[name]), f"{name} was not given back after the averaged evaluation"


def test_the_full_architecture_trains_beside_a_pruned_level_without_moving_its_own_weights() -> None:
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    randomise_batchnorms(model)
    dense = copy.deepcopy(model)
    values = {name: p.detach().clone() for name, p in dense.named_parameters()}
    groups, _ = find_groups(model, torch.zeros(1, 3, 64, 64))
    masks = ChannelMasks(model, groups)
    keep = [torch.arange(g.size) < g.size // 2 for g in groups]
    masks.zero_pruned(keep)
    used = masks.parameter_masks(keep)
    full = with_values(model, used, values)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(full(x)[0], dense.eval()(x)[0]), "pruned entries must read the dense values"
    pruned_before = copy.deepcopy(model.state_dict())
    model.train()
    with trainable_only(model, used) as params:
        optimizer = torch.optim.Adam(params, lr=1e-2)
        out = full(x)  # the full architecture's loss alone: its gradient must reach the shared entries only
        (out["boxes"].pow(2).mean() + out["scores"].pow(2).mean()).backward()
        optimizer.step()
    moved = False
    for name, p in model.named_parameters():
        if p in used:
            live = used[p].expand_as(p)
            assert not p[~live].any(), f"{name}: a pruned entry moved off zero"
            moved |= not torch.equal(p[live], pruned_before[name][live])
    assert moved, "the full architecture's loss did not train the shared weights"
    assert all(torch.equal(values[n], p) for n, p in dense.named_parameters()), "the dense values changed"


def test_feature_distillation_compares_every_block_and_leaves_no_hooks_behind() -> None:
    torch.manual_seed(0)
    teacher = load_model("yolov5n.yaml").model
    randomise_batchnorms(teacher)
    freeze_batchnorm(teacher)  # as fine-tuning runs: training-mode head, stored statistics
    student = copy.deepcopy(teacher)
    images = torch.rand(2, 3, 64, 64)
    with_features = distillation(teacher, student, feature_weight=1.0)
    with torch.no_grad():
        assert float(with_features(student, images, {})) == 0.0, "a copy of the teacher is already distilled"
        student.model[1].bn.bias.add_(1.0)  # a backbone block: the head's outputs barely notice
        outputs_only = float(distillation(teacher, student)(student, images, {}))
        combined = float(with_features(student, images, {}))
    assert combined - outputs_only > 0.01, "the changed block's features were not compared"
    assert not any(m._forward_hooks for m in (*teacher.modules(), *student.modules())), "hooks were left behind"


@pytest.mark.parametrize("head", ["anchor", "anchor-free"])
def test_distillation_ignores_background_logits_and_follows_objects(head: str) -> None:
    """Boxes and classes count where the teacher sees an object, not in the background that no threshold sees."""
    torch.manual_seed(0)
    if head == "anchor":  # one scale of a release head: (batch, anchors, h, w, 4 box + objectness + 80 classes)
        teacher = [torch.randn(1, 3, 4, 4, 85)]
        teacher[0][..., 4] = -12.0
        teacher[0][0, 0, 1, 1, 4] = 4.0  # one confident object
        obj_cell, bg_cell = (0, 0, 1, 1, slice(5, None)), (0, 1, 2, 2, slice(5, None))

        def output(t: list[torch.Tensor]) -> list[torch.Tensor]:
            return t
    else:  # Ultralytics: box distributions (batch, 4 x 16 bins, anchors) and class logits (batch, 80, anchors)
        teacher = [torch.randn(1, 64, 16), torch.full((1, 80, 16), -12.0)]
        teacher[1][0, 3, 5] = 4.0
        obj_cell, bg_cell = (0, slice(0, 8), 5), (0, slice(0, 8), 9)  # half of one side's bins

        def output(t: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"boxes": t[0], "scores": t[1]}

    assert float(head_distance(output(teacher), teacher)) == 0.0
    distances = {}
    for name, cell in (("object", obj_cell), ("background", bg_cell)):
        student = [t.clone() for t in teacher]
        student[0][cell] += 3.0  # class logits (anchor) or box bins (anchor-free) of one cell move
        distances[name] = float(head_distance(output(student), teacher))
    assert distances["background"] < distances["object"] / 1000, distances


def test_learning_rate_warms_up_linearly_then_holds() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = linear_warmup(optimizer, 4)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])


def _conv_bn_batches(seed: int = 0) -> tuple[torch.nn.Sequential, list[dict[str, torch.Tensor]]]:
    """A conv + BatchNorm whose stored statistics are exactly those of its inputs over the batches."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    batches = [{"img": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)} for _ in range(4)]
    model[1].momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch["img"].float() / 255)
    model[1].momentum = 0.1
    return model.eval(), batches


def test_batchnorm_recalibration_leaves_an_unpruned_model_exactly_as_it_was() -> None:
    reference, batches = _conv_bn_batches()
    model = copy.deepcopy(reference)
    recalibrate_batchnorm(model, reference, batches, torch.device("cpu"))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not model.training and model[1].momentum == 0.1


def test_batchnorm_recalibration_restores_the_normalised_outputs_after_pruning() -> None:
    reference, batches = _conv_bn_batches()
    images = torch.cat([b["img"] for b in batches]).float() / 255
    pruned = copy.deepcopy(reference)
    with torch.no_grad():
        pruned[0].weight[:, 0] = 0  # input channel 0 pruned: every filter's output statistics move
        bn = reference[1]

        def moments(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(images).transpose(0, 1).flatten(1)
            return out.mean(1), out.std(1)

        assert not torch.allclose(moments(pruned)[0], bn.bias, atol=1e-2), "pruning should shift the outputs"
        recalibrate_batchnorm(pruned, reference, batches, torch.device("cpu"))
        mean, std = moments(pruned)
        torch.testing.assert_close(mean, bn.bias, atol=1e-4, rtol=0)  # as the reference's own outputs are
        torch.testing.assert_close(std, bn.weight, atol=0, rtol=1e-3)
        assert torch.equal(pruned[1].running_mean, bn.running_mean), "statistics are left as stored"


# full_weight 1: level1 also trains through the full architecture; ema: epochs judged and kept by the average;
# cotrain: the full level's own values train beside them
@pytest.mark.parametrize(("full_weight", "ema", "cotrain"),
                         [(0.0, 0.0, False), (1.0, 0.0, False), (1.0, 0.9, False), (1.0, 0.9, True)])
def test_growing_up_leaves_every_smaller_level_unchanged(data: Path, tmp_path: Path, full_weight: float,
                                                         ema: float, cotrain: bool) -> None:
    cfg = PruneConfig(weights="yolov5n.yaml", data=str(data), out=str(tmp_path / "n.rvp.safetensors"), imgsz=64,
                      batch=4, step=0.25, max_fraction=0.5, min_map=0.0, levels=2, up_epochs=1, round_to=8,
                      lr=1e-3, full_weight=full_weight, ema=ema, cotrain=cotrain)
    pipeline = Pipeline(cfg)
    pipeline.report["dense"] = pipeline._evaluate(pipeline.model)
    pipeline.fine_tune_down()
    x = torch.rand(1, 3, 64, 64)

    def outputs() -> dict[str, torch.Tensor]:
        result = {}
        for name, step in pipeline.report["level_steps"].items():
            model = copy.deepcopy(pipeline.model).eval()
            ChannelMasks(model, pipeline.groups).zero_pruned([d > step for d in pipeline.drop])
            with torch.no_grad():
                result[name] = model(x)[0]
        return result

    down = outputs()
    # A regrown level starts out computing exactly what the level below it computes.
    saved = copy.deepcopy(pipeline.model.state_dict())
    steps = pipeline.report["level_steps"]
    old = pipeline.masks.parameter_masks(pipeline._alive(steps[PRUNED]))
    new = pipeline.masks.parameter_masks(pipeline._alive(steps["level1"]))
    pipeline._regrow({p: new[p] & ~old[p] for p in new}, old, zero_links=True)
    assert any(p[(new[p] & ~old[p]).expand_as(p)].abs().sum() > 0 for p in new), "nothing was regrown"
    level1 = copy.deepcopy(pipeline.model).eval()
    ChannelMasks(level1, pipeline.groups).zero_pruned(pipeline._alive(steps["level1"]))
    with torch.no_grad():
        torch.testing.assert_close(level1(x)[0], down[PRUNED], rtol=1e-5, atol=1e-5)
    pipeline.model.load_state_dict(saved)
    pruned_step = pipeline.report["level_steps"][PRUNED]
    assert pruned_step == 2 and all(int((d <= pruned_step).sum()) > 0 for d in pipeline.drop if len(d) > 16)
    pipeline.fine_tune_up(1)
    up = outputs()
    assert torch.equal(up[PRUNED], down[PRUNED]), "growing level1 and full changed the pruned level"
    assert not torch.equal(up[FULL], down[FULL]), "full was not grown"
    assert all(int((d < NEVER).sum()) < len(d) for d in pipeline.drop), "a group lost every channel"


def test_cotraining_moves_only_the_full_levels_own_values_and_growing_and_resuming_start_from_them(
        data: Path, tmp_path: Path) -> None:
    cfg = PruneConfig(weights="yolov5n.yaml", data=str(data), out=str(tmp_path / "c.rvp.safetensors"), imgsz=64,
                      batch=4, step=0.25, max_fraction=0.25, min_map=0.0, round_to=8, lr=1e-3, full_weight=1.0,
                      cotrain=True, ema=0.9)
    pipeline = Pipeline(cfg)
    pipeline.report["dense"] = pipeline._evaluate(pipeline.model)
    pipeline.fine_tune_down()
    dense = dict(pipeline.teacher.named_parameters())
    used = pipeline.masks.parameter_masks(pipeline._alive(pipeline.report["level_steps"][PRUNED]))
    moved = False
    for name, p in pipeline.model.named_parameters():
        values = pipeline.full_values[name]
        shared = used[p].expand_as(p) if p in used else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(values[shared], dense[name][shared]), f"{name}: a value the pruned level uses moved"
        moved |= not torch.equal(values[~shared], dense[name][~shared])
    assert moved, "the full level's own values did not train"
    resumed = Pipeline(cfg)
    resumed._load_state()
    assert all(torch.equal(resumed.full_values[n], v) for n, v in pipeline.full_values.items()), "not resumed"
    # Regrown to its own values, the full level computes what the down phase trained through its loss.
    x = torch.rand(1, 3, 64, 64)
    pipeline.model.eval()
    with torch.no_grad():
        trained = with_values(pipeline.model, used, pipeline.full_values)(x)[0]
        full = pipeline.masks.parameter_masks(pipeline._alive(0))
        pipeline._regrow({p: full[p] & ~used[p] for p in full}, used, zero_links=False)
        assert torch.equal(pipeline.model(x)[0], trained)


def test_a_seed_draws_the_same_augmented_batches(data: Path, tmp_path: Path) -> None:
    cfg = PruneConfig(weights="yolov5n.yaml", data=str(data), out=str(tmp_path / "n.rvp.safetensors"), imgsz=64,
                      batch=4)
    first, again, other = (next(iter(Pipeline(c).loader))["img"] for c in (cfg, cfg, replace(cfg, seed=1)))
    assert torch.equal(first, again), "the same seed augmented the images differently"
    assert not torch.equal(first, other)


def test_prune_cli_writes_a_nested_checkpoint_report_and_plots(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "n.rvp.safetensors"
    proc = subprocess.run([str(BIN / "revperception"), "prune", "--weights", "yolov5n.yaml", "--data", str(data),
                           "--out", str(out), "--imgsz", "64", "--batch", "4", "--step", "0.25", "--min-map", "0",
                           "--levels", "2", "--up-epochs", "1", "--round-to", "8", "--allocation", "sensitivity",
                           "--full-weight", "1", "--calibration", "4", "--recalibrate", "--reconstruct",
                           "--ema", "0.9", "--cotrain", "--seed", "3"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pruned = load_reversible(out)
    keeps = [pruned.levels.keep[n] for n in pruned.levels.names]
    assert pruned.levels.names == (PRUNED, "level1", FULL)
    assert keeps[0] != keeps[-1]  # nesting itself is enforced by Levels on load
    report = json.loads((tmp_path / "n.report.json").read_text())
    assert [s["step"] for s in report["steps"]][:2] == [1, 2]
    assert report["settings"]["seed"] == 3
    assert {"map50", "map50_no_finetune", "param_sparsity"} <= set(report["steps"][0])
    for step in report["steps"]:  # sensitivity allocation: each step frees its share of the parameters
        assert step["target"] <= step["param_sparsity"] < step["target"] + 0.05
        # the step starts from the best of pruned-only, BatchNorm-corrected and refitted, and only improves from there
        assert step["map50"] >= max(step["map50_pruned_only"], step["map50_recalibrated"], step["map50_reconstructed"])
    assert set(report["levels"]) == {PRUNED, "level1", FULL}
    for png in ("n_map_vs_sparsity.png", "n_latency_vs_sparsity.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "n.work").exists(), "a finished run leaves no resumable state behind"
    assert read_metadata(out)["info"]["finetune"] == "down+up (distill)"


def test_an_interrupted_run_resumes_from_its_last_step(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.rvp.safetensors"
    args = [str(BIN / "revperception"), "prune", "--weights", "yolov5n.yaml", "--data", str(data), "--out",
            str(out), "--imgsz", "64", "--batch", "4", "--step", "0.2", "--min-map", "0", "--epochs", "2",
            "--up-epochs", "1", "--round-to", "8"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "r.work" / "state.rvp.safetensors"
    deadline = time.monotonic() + 300
    while not (state.exists() and len(read_metadata(state)["report"]["steps"]) >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never saved a step"
        time.sleep(0.2)  # polling a file another process writes; the condition, not the sleep, synchronises
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130 and "--resume" in stderr
    saved = read_metadata(state)["report"]["steps"]
    assert not out.exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "r.report.json").read_text())
    assert len(report["steps"]) >= len(saved)
    for before, after in zip(saved, report["steps"], strict=False):  # kept as saved; only measurements added
        assert before.items() <= after.items()
    assert load_reversible(out).levels.names[0] == PRUNED


def test_eval_cli_reports_a_checkpoint_level(data: Path, tmp_path: Path) -> None:
    ckpt, result = tmp_path / "e.rvp.safetensors", tmp_path / "eval.json"
    subprocess.run([str(BIN / "revperception"), "prune", "--weights", "yolov5n.yaml", "--no-finetune", "--imgsz",
                    "64", "--out", str(ckpt)], check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(BIN / "revperception"), "eval", "--checkpoint", str(ckpt), "--level", "full",
                           "--data", str(data), "--json", str(result)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = json.loads(result.read_text())
    assert values["level"] == "full" and values["images"] == 4 and 0.0 <= values["map50"] <= 1.0
    bad = subprocess.run([str(BIN / "revperception"), "eval", "--checkpoint", str(ckpt), "--level", "tiny",
                          "--data", str(data)], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1 and "unknown level 'tiny'" in bad.stderr


@pytest.fixture
def coco_subset(tmp_path: Path) -> Path:
    """16 training and 8 validation images of ../shared's coco128 (skips without it)."""
    coco = shared_path("data/coco128-train")
    images = sorted((coco / "images" / "train2017").glob("*.jpg"))[:24]
    (tmp_path / "train.txt").write_text("\n".join(map(str, images[:16])) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(map(str, images[16:])) + "\n")
    names = (coco / "data.yaml").read_text().split("names:", 1)[1]
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: train.txt\nval: val.txt\nnames:{names}")
    return tmp_path / "data.yaml"


def test_release_model_fine_tunes_on_real_images(coco_subset: Path, tmp_path: Path) -> None:
    cfg = PruneConfig(weights=str(shared_path("models/yolov5n.pt")), data=str(coco_subset),
                      out=str(tmp_path / "v5n.rvp.safetensors"), imgsz=160, step=0.1, max_fraction=0.2, min_map=0.0,
                      up_epochs=1, round_to=8)
    report = Pipeline(cfg).run()
    assert report["dense"]["map50"] > 0.2, "the release model should detect on COCO images at 160 px"
    assert report["levels"][FULL]["map50"] > 0.5 * report["dense"]["map50"]
    assert report["steps"][0]["param_sparsity"] > 0.05


def test_fine_tuning_that_lowers_validation_map_is_not_kept(coco_subset: Path, tmp_path: Path) -> None:
    cfg = PruneConfig(weights=str(shared_path("models/yolov5n.pt")), data=str(coco_subset),
                      out=str(tmp_path / "h.rvp.safetensors"), imgsz=160, lr=0.1, patience=1)
    pipeline = Pipeline(cfg)
    keep = pipeline.masks.full()
    keep[0][-1] = False  # one pruned filter: the student now differs from its teacher, so the loss has gradients
    pipeline.masks.zero_pruned(keep)
    before = copy.deepcopy(pipeline.model.state_dict())
    start = pipeline._evaluate(pipeline.model)
    result = pipeline._train_best(pipeline.masks.parameter_masks(keep), 3, "too hot", start=start, level="hot")
    epochs = [u for u in pipeline.report["up"] if u["level"] == "hot"]
    assert start["map50"] > 0.2 and len(epochs) == 1 and epochs[0]["map50"] < start["map50"], "patience 1: one epoch"
    assert result["best_epoch"] == 0 and result["map50"] == start["map50"]
    after = pipeline.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the harmful epoch's weights were kept"


def _an_epoch_moves_weights(pipeline: Pipeline, keep: list[torch.Tensor]) -> bool:
    """Whether one fine-tuning epoch of the architecture `keep` changes any weight."""
    before = copy.deepcopy(pipeline.model.state_dict())
    pipeline._optimise(pipeline.masks.parameter_masks(keep), 1, "one epoch")
    after = pipeline.model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_detection_loss_trains_on_labels(data: Path, tmp_path: Path) -> None:
    cfg = PruneConfig(weights="yolov5n.yaml", data=str(data), out=str(tmp_path / "d.rvp.safetensors"), imgsz=64,
                      batch=4, loss="detect", lr=1e-3)
    pipeline = Pipeline(cfg)
    assert _an_epoch_moves_weights(pipeline, pipeline.masks.full())
    with pytest.raises(ValueError, match="anchor-free"):
        Pipeline(PruneConfig(weights=str(shared_path("models/yolov5n.pt")), data=str(data), out=str(tmp_path / "x"),
                             loss="detect"))


def test_distillation_fine_tunes_on_unlabelled_frames_and_the_detection_loss_refuses_them(data: Path,
                                                                                         tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(data.parent, frames)
    shutil.rmtree(frames / "labels" / "train")  # a user's own camera frames: images only; validation stays labelled
    (frames / "data.yaml").write_text(data.read_text().replace(str(data.parent), str(frames)))
    cfg = PruneConfig(weights="yolov5n.yaml", data=str(frames / "data.yaml"), out=str(tmp_path / "u.rvp.safetensors"),
                      imgsz=64, batch=4, lr=1e-3)
    pipeline = Pipeline(cfg)
    assert all(batch["cls"].numel() == 0 for batch in pipeline.loader), "the training frames carry no labels"
    keep = pipeline.masks.full()
    keep[0][-1] = False  # one pruned filter: the student now differs from its teacher, so the loss has gradients
    pipeline.masks.zero_pruned(keep)
    assert _an_epoch_moves_weights(pipeline, keep)
    with pytest.raises(ValueError, match="No labels found"):
        Pipeline(replace(cfg, loss="detect"))
