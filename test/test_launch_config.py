"""The launch file and the parameters file, checked statically: `launch` has no wheel to run them with."""

from __future__ import annotations

import ast

import yaml
from rclpy.parameter import Parameter

from conftest import ROOT
from revperception.ros.perception_node import PARAMETERS

LAUNCH = ROOT / "launch" / "perception.launch.py"
TOPICS = {"image", "anomaly"}  # the node's relative topic names that a launch argument may remap


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def _configurations(node: ast.AST) -> set[str]:
    """Launch arguments read inside `node` (through the `arg = LaunchConfiguration` alias)."""
    return {c.args[0].value for c in _calls(node, "arg")}


def test_launch_file_compiles_and_every_argument_reaches_the_node() -> None:
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    compile(tree, str(LAUNCH), "exec")
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    node = _calls(tree, "LifecycleNode")[0]
    assert ast.literal_eval(_keyword(node, "executable")) == "perception_node"
    parameters = _keyword(node, "parameters")
    params_dict = next(e for e in parameters.elts if isinstance(e, ast.Dict))
    params = {ast.literal_eval(k): _configurations(v) for k, v in zip(params_dict.keys, params_dict.values,
                                                                     strict=True)}
    assert set(params) <= set(PARAMETERS) | {"use_sim_time"}
    remaps = {ast.literal_eval(t.elts[0]): _configurations(t.elts[1]) for t in _keyword(node, "remappings").elts}
    assert set(remaps) <= TOPICS
    used = (set().union(*params.values(), *remaps.values()) | _configurations(_keyword(node, "namespace"))
            | _configurations(parameters.elts[0]))
    assert declared == used == {"checkpoint", "image", "anomaly", "params_file", "namespace", "use_sim_time"}


def test_params_file_lists_every_parameter_with_its_default() -> None:
    document = yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert set(values) == set(PARAMETERS)
    for name, (default, _) in PARAMETERS.items():
        expected = [] if default is Parameter.Type.INTEGER_ARRAY else default
        assert values[name] == expected, name
    text = (ROOT / "config" / "perception.yaml").read_text()
    assert all(f"{name}:" in line and "#" in line for name in PARAMETERS for line in text.splitlines()
               if line.strip().startswith(f"{name}:"))
