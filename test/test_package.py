"""The ament_python package: manifest, installed files, and the core/ROS boundary."""

from __future__ import annotations

import os
import subprocess
import sys

from catkin_pkg.package import parse_package

from conftest import ROOT


def test_manifest_declares_what_the_node_needs() -> None:
    package = parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3
    assert package.get_build_type() == "ament_python"
    depends = {d.name for d in package.build_depends} & {d.name for d in package.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "vision_msgs",
            "lifecycle_msgs"} <= depends
    assert {"cv_bridge", "launch", "launch_ros"} <= {d.name for d in package.exec_depends}
    assert "python3-pytest" in {d.name for d in package.test_depends}


def test_ament_index_marker_exists() -> None:
    assert (ROOT / "resource" / "revperception").is_file()


def test_core_imports_no_rclpy() -> None:
    """Every module outside the ROS adapters (ros/) and the tools that start nodes (tools/), found by walking the
    package, so a new module is covered without being listed."""
    import pkgutil

    import revperception

    modules = [m.name for m in pkgutil.walk_packages(revperception.__path__, "revperception.")
               if not m.name.startswith(("revperception.ros", "revperception.tools"))]
    assert "revperception.offline.pipeline" in modules and "revperception.io" in modules
    code = f"import sys, {', '.join(modules)}; assert 'rclpy' not in sys.modules, 'rclpy leaked'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_child_processes_keep_every_torch_thread() -> None:
    """Ultralytics sets OMP_NUM_THREADS=1 on import when it is unset; the nodes we start must not inherit that."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = ("import os, subprocess, sys, revperception.models; "
            "print(subprocess.run([sys.executable, '-c', 'import os, torch; print(torch.get_num_threads())'], "
            "capture_output=True, text=True, check=True).stdout.strip())")
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           timeout=120)
    assert int(child.stdout.strip().splitlines()[-1]) == len(os.sched_getaffinity(0))
