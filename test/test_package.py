"""The ament_python package: manifest, installed files, and the core/ROS boundary."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

from conftest import ROOT

# Python modules that are ROS packages (rosdep keys of the same name).
ROS_MODULES = {"rclpy", "rcl_interfaces", "builtin_interfaces", "sensor_msgs", "std_msgs", "std_srvs",
               "diagnostic_msgs", "vision_msgs", "lifecycle_msgs", "ament_index_python", "launch", "launch_ros",
               "cv_bridge", "geometry_msgs", "rosbag2_py"}


def _imported_top_level(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_manifest_declares_exactly_the_ros_packages_the_code_imports() -> None:
    package = parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3
    assert package.get_build_type() == "ament_python"
    sources = [*(ROOT / "revperception").rglob("*.py"), *(ROOT / "launch").glob("*.py")]
    # lifecycle_msgs: the types of the managed node's ~/change_state and ~/get_state (rclpy.lifecycle imports them)
    imported = (_imported_top_level(sources) & ROS_MODULES) | {"lifecycle_msgs"}
    declared = {d.name for d in package.exec_depends} & ROS_MODULES
    assert declared == imported  # nothing missing, nothing declared that no code uses (cv_bridge was)
    assert {"rclpy", "sensor_msgs", "vision_msgs", "lifecycle_msgs"} <= {d.name for d in package.build_depends}
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


def _internal_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy (function-level) imports included."""
    modules = {}
    for path in (ROOT / "revperception").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_layers_read_top_down_with_no_import_cycle() -> None:
    """No module imports one that (directly or through others) imports it back, not even lazily; the file format
    knows nothing of models."""
    graph = _internal_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert graph["revperception.checkpoint.format"] <= {"revperception.io"}
    assert "revperception.compiled" in graph["revperception.detector"]  # the walk sees what it must


def test_child_processes_keep_every_torch_thread() -> None:
    """Ultralytics sets OMP_NUM_THREADS=1 on import when it is unset; the nodes we start must not inherit that."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = ("import os, subprocess, sys, revperception.models; "
            "print(subprocess.run([sys.executable, '-c', 'import os, torch; print(torch.get_num_threads())'], "
            "capture_output=True, text=True, check=True).stdout.strip())")
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           timeout=120)
    assert int(child.stdout.strip().splitlines()[-1]) == len(os.sched_getaffinity(0))
