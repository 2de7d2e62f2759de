"""The `revperception` command as users run it: prune without data, bench, and clear failures on bad files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import DAMAGE_REASONS, damaged_copy, revperception
from revperception.checkpoint import load_reversible, read_metadata


@pytest.fixture
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def test_prune_writes_a_verified_reversible_checkpoint(checkpoint: Path) -> None:
    meta = read_metadata(checkpoint)
    assert meta["levels"]["names"] == ["pruned", "level1", "full"]
    assert meta["imgsz"] == 160 and meta["names"]["0"] == "person"
    assert meta["info"]["ranking"] == "l1" and meta["info"]["finetune"] == "none"
    pruned = load_reversible(checkpoint)
    assert [sum(pruned.levels.keep[n]) for n in pruned.levels.names] == sorted(
        sum(pruned.levels.keep[n]) for n in pruned.levels.names)


@pytest.mark.slow
def test_bench_reports_every_figure(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = revperception("bench", "--model", str(checkpoint), "--imgsz", "160", "--runs", "1", "--loads", "1",
                         "--switches", "200", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "swap (median)" in proc.stdout
    result = json.loads(out.read_text())
    for key in ("swap_ms", "disk_load_ms", "infer_full_ms", "infer_pruned_ms", "latency_ratio", "params_full",
                "params_pruned", "param_sparsity", "flops_ratio", "encoding_bytes", "resident_bytes", "dense_bytes"):
        assert key in result, key
    assert 0.4 < result["param_sparsity"] < 0.8 and 0.2 < result["flops_ratio"] < 0.8
    assert result["resident_bytes"] <= 1.02 * result["dense_bytes"]
    assert result["encoding_bytes"] < 8000
    assert result["per_level"]["full"]["imgsz"] == 160 and result["per_level"]["pruned"]["latency_ms"] > 0
    assert result["backend"] == "torch" and result["precision"] == "fp32"
    # the alternative to a switch on torch: building the full model from disk (how much faster is bench's figure)
    assert result["build_ms"] == result["disk_load_ms"] > 0
    assert result["swap_speedup_vs_build"] == pytest.approx(result["build_ms"] / result["swap_ms"])
    if importlib.util.find_spec("openvino"):
        assert result["peer_dense_ms"] > 0 and "peer: dense, OpenVINO defaults" in proc.stdout
    else:
        assert result["peer_dense_ms"] is None


@pytest.mark.slow
def test_bench_on_openvino_compiles_every_level_once_and_times_the_peer(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    out = tmp_path / "bench.json"
    proc = revperception("bench", "--model", str(checkpoint), "--runs", "1", "--loads", "1", "--backend", "openvino",
                         "--precision", "fp32", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["backend"] == "openvino" and result["precision"] == "fp32" and result["peer_dense_ms"] > 0
    assert set(result["per_level"]) == {"pruned", "level1", "full"}
    assert all(level["latency_ms"] > 0 for level in result["per_level"].values())
    # the alternative to a switch on OpenVINO: compiling the level, not reading a file
    assert result["build_ms"] > 0 and result["build_ms"] != result["disk_load_ms"]
    assert result["swap_speedup_vs_build"] == pytest.approx(result["build_ms"] / result["swap_ms"])
    assert result["resident_bytes"] > 0 and result["dense_bytes"] > 0


@pytest.mark.slow
def test_bench_times_every_level_at_its_own_input_size(checkpoint: Path, tmp_path: Path) -> None:
    sized = tmp_path / "sized.rvp.safetensors"
    proc = revperception("prune", "--weights", str(checkpoint.with_name("n.pt")), "--no-finetune", "--imgsz",
                         "160", "--filter-fraction", "0.36", "--levels", "2", "--level-imgsz", "96", "128",
                         "--out", str(sized))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bench.json"
    proc = revperception("bench", "--model", str(sized), "--runs", "1", "--loads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    levels = result["per_level"]
    assert {name: level["imgsz"] for name, level in levels.items()} == {"pruned": 96, "level1": 128, "full": 160}
    assert result["flops_pruned"] == levels["pruned"]["flops"] < levels["level1"]["flops"] < levels["full"]["flops"]
    assert result["infer_pruned_ms"] == levels["pruned"]["latency_ms"] and result["imgsz"] == 160
    assert "level pruned" in proc.stdout and "96 px" in proc.stdout


@pytest.mark.parametrize("damage", sorted(DAMAGE_REASONS))
def test_bad_checkpoints_exit_non_zero_with_a_reason(checkpoint: Path, tmp_path: Path, damage: str) -> None:
    bad = damaged_copy(checkpoint, tmp_path, damage)
    proc = revperception("bench", "--model", str(bad), "--runs", "1", "--loads", "1")
    assert proc.returncode == 1
    assert DAMAGE_REASONS[damage] in proc.stderr and "Traceback" not in proc.stderr


def test_prune_without_data_is_refused_and_names_the_data_free_option(tmp_path: Path) -> None:
    proc = revperception("prune", "--weights", "yolov5n.yaml", "--out", str(tmp_path / "x.rvp.safetensors"))
    assert proc.returncode == 2 and "--no-finetune" in proc.stderr


@pytest.mark.slow
@pytest.mark.ros
def test_bench_node_measures_reversion_over_dds(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "node.json"
    proc = revperception("bench-node", "--checkpoint", str(checkpoint), "--imgsz", "160", "--trials", "3",
                         "--throughput-s", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["trials"] == 3 and result["revert_worst_ms"] >= result["revert_median_ms"] > 0
    assert result["node_fps_pruned"] > 0 and result["reload_median_ms"] > 0
    assert len(result["throughput_rounds"]) == 5 and result["throughput_ratio"] > 0
    assert "anomaly -> first full-level detections" in proc.stdout
