"""The launch file and the parameters files, checked statically: `launch` has no wheel to run them with."""

from __future__ import annotations

import ast
from typing import Any

import pytest
import yaml
from rclpy.parameter import Parameter

from conftest import ROOT
from revperception.ros import anomaly_monitor, perception_node
from revperception.ros.parameters import PARAMETERS_DOC, PARAMS_FILES, render_parameters_doc, render_params_file

LAUNCH = ROOT / "launch" / "perception.launch.py"
TOPICS = {"image", "anomaly"}  # the nodes' relative topic names that a launch argument may remap
# launch action -> (executable, its parameter table, the launch argument naming its parameters file)
NODES = {"LifecycleNode": ("perception_node", perception_node.PARAMETERS, "params_file"),
         "Node": ("anomaly_monitor", anomaly_monitor.PARAMETERS, "monitor_params_file")}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def _configurations(node: ast.AST) -> set[str]:
    """Launch arguments read inside `node` (through the `arg = LaunchConfiguration` alias)."""
    return {c.args[0].value for c in _calls(node, "arg")}


def _node_arguments(tree: ast.AST, action: str) -> tuple[set[str], dict[str, set[str]]]:
    """Check one node action's wiring; returns the launch arguments it reads and its remappings."""
    executable, table, params_file = NODES[action]
    (node,) = _calls(tree, action)
    assert ast.literal_eval(_keyword(node, "executable")) == executable
    parameters = _keyword(node, "parameters")
    assert _configurations(parameters.elts[0]) == {params_file}
    params_dict = next(e for e in parameters.elts if isinstance(e, ast.Dict))
    params = {ast.literal_eval(k): _configurations(v) for k, v in zip(params_dict.keys, params_dict.values,
                                                                     strict=True)}
    assert set(params) <= set(table) | {"use_sim_time"}
    remaps = {ast.literal_eval(t.elts[0]): _configurations(t.elts[1]) for t in _keyword(node, "remappings").elts}
    assert set(remaps) <= TOPICS
    used = set().union(*params.values(), *remaps.values(), _configurations(_keyword(node, "namespace")),
                       {params_file})
    return used, remaps


def test_launch_file_compiles_and_every_argument_reaches_a_node() -> None:
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    compile(tree, str(LAUNCH), "exec")
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    perception_args, perception_remaps = _node_arguments(tree, "LifecycleNode")
    monitor_args, monitor_remaps = _node_arguments(tree, "Node")
    assert perception_args == {"checkpoint", "image", "anomaly", "params_file", "namespace", "use_sim_time",
                               "autostart"}
    # the monitor watches the same camera and speaks on the topic the perception node listens to
    assert monitor_remaps == perception_remaps
    assert monitor_args == {"image", "anomaly", "monitor_params_file", "namespace", "use_sim_time"}
    (condition,) = _calls(tree, "IfCondition")
    assert _configurations(condition) == {"monitor"}
    assert _keyword(_calls(tree, "Node")[0], "condition") is condition
    assert declared == perception_args | monitor_args | {"monitor"}
    for name in ("monitor", "autostart"):
        argument = next(c for c in _calls(tree, "DeclareLaunchArgument") if c.args[0].value == name)
        assert ast.literal_eval(_keyword(argument, "default_value")) == "true", name


@pytest.mark.parametrize(("config", "table"), [("perception.yaml", perception_node.PARAMETERS),
                                               ("anomaly_monitor.yaml", anomaly_monitor.PARAMETERS)])
def test_params_files_are_generated_from_the_parameter_tables(config: str, table: dict[str, tuple[Any, Any]]) -> None:
    """Each file is what `python -m revperception.ros.parameters` writes from its node's table, and loads back
    to every default with its type (the generator writes JSON scalars, which must read back as YAML)."""
    text = (ROOT / "config" / config).read_text()
    _, what, usage = PARAMS_FILES[config]
    assert text == render_params_file(table, what, usage), "stale: run `python -m revperception.ros.parameters`"
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert list(values) == list(table)
    for name, (default, _) in table.items():
        expected = [] if default is Parameter.Type.INTEGER_ARRAY else default
        assert values[name] == expected and type(values[name]) is type(expected), name


def test_the_parameters_doc_is_generated_from_the_parameter_tables() -> None:
    """docs/parameters.md is what the generator writes: a row per parameter of each node, with its default."""
    text = (ROOT / PARAMETERS_DOC).read_text()
    assert text == render_parameters_doc(), "stale: run `python -m revperception.ros.parameters`"
    for table in (perception_node.PARAMETERS, anomaly_monitor.PARAMETERS):
        assert all(f"| `{name}` |" in text for name in table)
