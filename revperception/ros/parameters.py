"""Parameter descriptors in one line each, shared by the package's nodes, and the parameter files made from them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from revperception.io import atomic_write_text


def describe(description: str, *, read_only: bool = False, low: float | None = None, high: float | None = None,
              integer: bool = False) -> ParameterDescriptor:
    """A descriptor with its description, read-only flag and (integer or float) range, as ros2 param shows it."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if low is not None:
        if integer:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
    return descriptor


# The parameter files users start the nodes with, each generated from its node's PARAMETERS table (the one source
# of names, defaults and descriptions): `python -m revperception.ros.parameters` rewrites them, a test compares.
PARAMS_FILES = {  # file in config/ -> (node module, what the file is for, how it is used)
    "perception.yaml": ("revperception.ros.perception_node", "the revperception perception node",
                        "ros2 run revperception perception_node --ros-args --params-file config/perception.yaml "
                        "-r image:=/camera/image_raw"),
    "anomaly_monitor.yaml": ("revperception.ros.anomaly_monitor", "the revperception reference anomaly monitor",
                             "ros2 run revperception anomaly_monitor --ros-args --params-file "
                             "config/anomaly_monitor.yaml -r image:=/camera/image_raw"),
}


PARAMETERS_DOC = "docs/parameters.md"  # every node's parameters as tables, generated alongside the files


def _default(default: Any) -> str:
    return json.dumps([] if default is Parameter.Type.INTEGER_ARRAY else default)  # JSON scalars are YAML


def _range(descriptor: ParameterDescriptor) -> str:
    ranges = [*descriptor.integer_range, *descriptor.floating_point_range]
    return f"{ranges[0].from_value}..{ranges[0].to_value}" if ranges else ""


def render_params_file(table: dict[str, tuple[Any, ParameterDescriptor]], what: str, usage: str) -> str:
    """Every parameter of `table` at its default, with its description, range and whether it changes at run time."""
    lines = [f"# Parameters of {what}, each at its default. Generated from its PARAMETERS table by",
             "# `python -m revperception.ros.parameters`: edit the table, not this file.", f"# {usage}", "/**:",
             "  ros__parameters:"]
    for name, (default, descriptor) in table.items():
        notes = [_range(descriptor)] if _range(descriptor) else []
        notes += [] if descriptor.read_only else ["run time"]
        comment = descriptor.description + (f" ({', '.join(notes)})" if notes else "")
        lines.append(f"    {name}: {_default(default)}".ljust(34) + f"# {comment}")
    return "\n".join(lines) + "\n"


def render_parameters_doc() -> str:
    """Markdown: one table per node of PARAMS_FILES (name, default, range, when a change applies, description)."""
    lines = ["# Node parameters", "",
             "Generated from the nodes' PARAMETERS tables by `python -m revperception.ros.parameters`",
             "(which also writes `config/`); edit the tables, not this file."]
    for file, (module, what, usage) in PARAMS_FILES.items():
        lines += ["", f"## {what[0].upper()}{what[1:]}: `config/{file}`", "", f"`{usage}`", "",
                  "| parameter | default | range | changes | description |", "| --- | --- | --- | --- | --- |"]
        for name, (default, descriptor) in importlib.import_module(module).PARAMETERS.items():
            when = "at start" if descriptor.read_only else "at run time"
            lines.append(f"| `{name}` | `{_default(default)}` | {_range(descriptor)} | {when} | "
                         f"{descriptor.description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_params_files(root: Path) -> list[Path]:
    """Regenerate every file of PARAMS_FILES in `root`/config and the parameters doc (each atomically)."""
    written = []
    for file, (module, what, usage) in PARAMS_FILES.items():
        table = importlib.import_module(module).PARAMETERS
        atomic_write_text(root / "config" / file, render_params_file(table, what, usage))
        written.append(root / "config" / file)
    atomic_write_text(root / PARAMETERS_DOC, render_parameters_doc())
    return [*written, root / PARAMETERS_DOC]


if __name__ == "__main__":
    for path in write_params_files(Path(__file__).resolve().parents[2]):
        print(f"wrote {path}")
