"""Test-session wiring: an isolated DDS domain on loopback, shared fixtures, optional ../shared data."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import domain_coordinator
import pytest
import torch

# One DDS domain per test session, held for the whole session by domain_coordinator (as launch_testing does: a
# port per domain id, so two runs on one machine never share one), discovery on this host only. Subprocesses
# inherit it. A ROS_DOMAIN_ID set by the caller is kept.
_DOMAIN = contextlib.ExitStack()
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN.enter_context(domain_coordinator.domain_id()))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("YOLO_OFFLINE", "1")


def pytest_unconfigure() -> None:
    _DOMAIN.close()

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BIN = Path(sys.executable).parent


@pytest.fixture
def ros_context() -> Iterator[None]:
    """rclpy initialised for one test, shut down after it."""
    import rclpy

    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()


def revperception(*args: str) -> subprocess.CompletedProcess:
    """The `revperception` console script, as users run it."""
    return subprocess.run([str(BIN / "revperception"), *args], capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-level checkpoint (pruned, level1, full) by `prune --no-finetune` of YOLOv5n built from its YAML.

    The weights get real BatchNorm statistics and spread class biases first: a fresh model scores every
    box alike, and NMS over near-ties cannot tell two equal implementations apart.
    """
    from revperception.models import load_model

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = load_model("yolov5n.yaml").model
    randomise_batchnorms(model)
    spread_class_biases(model)
    torch.save({"model": model}, folder / "n.pt")
    out = folder / "n.rvp.safetensors"
    proc = revperception("prune", "--weights", str(folder / "n.pt"), "--filter-fraction", "0.36", "--levels", "2",
                         "--no-finetune", "--imgsz", "160", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    return out


# How each kind of damage to a checkpoint is reported.
DAMAGE_REASONS = {"missing": "does not exist", "truncated": "truncated", "tampered": "sha256 mismatch"}


def damaged_copy(checkpoint: Path, folder: Path, damage: str) -> Path:
    """A broken copy of `checkpoint` in `folder`: missing, cut in half, or with one weight byte flipped."""
    bad = folder / "bad.rvp.safetensors"
    data = bytearray(checkpoint.read_bytes())
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "tampered":
        data[-100] ^= 0xFF
        bad.write_bytes(data)
    return bad


def resending(publisher: Any, msg: Any, done: Callable[[], bool], period_s: float = 0.5) -> Callable[[], bool]:
    """A `done` for spin_until that (re)publishes `msg` every `period_s` until `done()` holds.

    Discovery across processes is asymmetric: the other side may match our writer after we match its reader,
    and a volatile message sent in between is lost. Resending is safe where the receiver treats copies alike.
    """
    last = -period_s

    def check() -> bool:
        nonlocal last
        if done():
            return True
        if time.monotonic() - last >= period_s:
            publisher.publish(msg)
            last = time.monotonic()
        return False

    return check


class NodeRig:
    """A node spinning in its own executor thread, as its main() runs it, and a probe node in its namespace."""

    def __init__(self, node: Any) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node = node
        self.ns = node.get_namespace()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.probe = Node("probe", namespace=self.ns)

    def close(self) -> None:
        self.probe.destroy_node()
        self.executor.shutdown()
        self.thread.join(timeout=10)  # no callback may run on a destroyed node
        self.node.destroy_node()


SharedPath = Callable[[str], Path]


@pytest.fixture(scope="session")
def shared() -> SharedPath:
    """`shared("models/yolov5n.pt")`: a file under ../shared, or a skip with the reason. Tests that use it (directly
    or through a fixture) are marked `shared`."""
    return shared_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers that follow from what a test uses: ../shared data, or rclpy over DDS."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared" in names:
            item.add_marker(pytest.mark.shared)
        if "ros_context" in names:
            item.add_marker(pytest.mark.ros)


def shared_path(relative: str) -> Path:
    """A file under ../shared, or a skip with the reason when it is absent (as on users' machines)."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared holds optional real data)")
    return path


def stop_process(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Stop a ROS process as `ros2 launch` does (SIGINT); a process that ignores it fails the test."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args[0]} did not exit within {timeout_s} s of SIGINT") from None


def randomise_batchnorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Fresh models have identity BatchNorms; real ones do not, and the invariants must hold for those."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for tensor, low, high in ((bn.weight, 0.5, 1.5), (bn.bias, -0.2, 0.2), (bn.running_mean, -0.2, 0.2),
                                      (bn.running_var, 0.5, 1.5)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def spread_class_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """A fresh model scores every box alike (about 0); spread biases give real, distinct scores, so NMS has no
    near-ties that a different CPU's rounding could break."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branch in model.model[-1].cv3:
            branch[-1].bias.copy_(torch.randn(branch[-1].bias.shape, generator=generator) * 3 - 4)


def synthetic_dataset(root: Path, images: int = 8, size: int = 96, val: int = 4, test: int = 0) -> Path:
    """A tiny labelled YOLO dataset of coloured boxes on noise, for pipeline mechanics (no real data needed)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", val), ("test", test)):
        if not count:
            continue
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(2):
                cls = int(rng.integers(0, 3))
                w, h = rng.integers(size // 6, size // 3, 2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), [(0, 0, 255), (0, 255, 0),
                                                                                  (255, 0, 0)][cls], -1)
                lines.append(f"{cls} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), image)
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    splits = "".join(f"{split}: images/{split}\n" for split, count in (("train", 1), ("val", 1), ("test", test))
                     if count)
    data.write_text(f"path: {root}\n{splits}names:\n  0: red\n  1: green\n  2: blue\n")
    return data
