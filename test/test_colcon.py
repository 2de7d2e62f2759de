"""The package as ROS users build and run it: colcon build (copied and --symlink-install) into a temporary install
space, the installed node started from it against a real frame, its files found through the ament index, and
colcon test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from rclpy.node import Node
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from conftest import BIN, ROOT, resending, stop_process
from revperception.ros import qos
from revperception.ros.conversions import bgr_to_image
from revperception.ros.spin import spin_until
from revperception.tools.synthetic import road_frame

COLCON = BIN / "colcon"
pytestmark = [pytest.mark.ros, pytest.mark.slow,
              pytest.mark.skipif(not COLCON.exists(), reason="colcon is not installed (requirements-ros.txt)")]


def colcon(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COLCON), "--log-base", str(workspace / "log"), *args], cwd=workspace,
                          capture_output=True, text=True, timeout=600, check=False)


def build(workspace: Path, *options: str) -> dict[str, str]:
    """colcon build of this package in `workspace`; the environment `. install/setup.bash` gives."""
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "revperception").symlink_to(ROOT)
    proc = colcon(workspace, "build", "--base-paths", "src", *options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env = subprocess.run(["bash", "-c", f". {workspace}/install/setup.bash && env -0"], capture_output=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "AMENT_PREFIX_PATH"})
    return dict(item.split("=", 1) for item in env.stdout.decode().split("\0") if "=" in item)


@pytest.mark.parametrize("options", [[], ["--symlink-install"]], ids=["copied", "symlink-install"])
def test_the_installed_node_runs_from_the_install_space(ros_context: None, tiny_checkpoint: Path, tmp_path: Path,
                                                        options: list[str]) -> None:
    env = build(tmp_path, *options)
    install = tmp_path / "install" / "revperception"
    share = install / "share" / "revperception"
    for installed in ("launch/perception.launch.py", "config/perception.yaml", "config/anomaly_monitor.yaml",
                      "config/fastdds_large_frames.xml", "models/demo-yolov5n.rvp.safetensors", "package.xml",
                      "LICENSE"):
        assert (share / installed).is_file(), installed
    where = subprocess.run([env.get("COLCON_PYTHON_EXECUTABLE", str(BIN / "python")), "-c",
                            "import revperception, revperception.share as s; print(revperception.__file__); "
                            "print(s.share_dir())"], capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    module, share_dir = where.stdout.split()
    assert Path(share_dir).resolve() == share.resolve()  # through the ament index, not the source tree
    if not options:  # a copied install imports its own copy of the package
        assert Path(module).is_relative_to(install)
    node = subprocess.Popen([str(install / "lib" / "revperception" / "perception_node"), "--ros-args",
                             "--params-file", str(share / "config" / "perception.yaml"), "-p",
                             f"checkpoint:={tiny_checkpoint}", "-p", "imgsz:=160", "-p", "image_qos:=reliable",
                             "-p", "anomaly_timeout_s:=0.0", "-r", "__ns:=/installed"], env=env, cwd=tmp_path)
    probe = Node("probe")
    try:
        replies: list[Detection2DArray] = []
        images = probe.create_publisher(Image, "/installed/image", qos.IMAGE_RELIABLE)
        probe.create_subscription(Detection2DArray, "/installed/detections", replies.append, qos.DETECTIONS)
        frame = bgr_to_image(road_frame(0)[::4, ::4].copy())
        assert spin_until(probe, lambda: images.get_subscription_count() > 0, 120.0), "installed node not up"
        assert spin_until(probe, resending(images, frame, lambda: bool(replies)), 60.0), "no detections"
    finally:
        probe.destroy_node()
        stop_process(node)
    assert node.returncode == 0


def test_colcon_test_runs_the_packages_tests(tmp_path: Path) -> None:
    build(tmp_path)
    proc = colcon(tmp_path, "test", "--base-paths", "src", "--pytest-args", "test/test_conversions.py", "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = colcon(tmp_path, "test-result", "--test-result-base", str(tmp_path / "build"), "--all")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 errors, 0 failures" in result.stdout and " tests" in result.stdout
