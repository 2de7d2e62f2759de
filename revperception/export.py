"""One level of a reversible model as a network of its own: for an exporter, a compiler, or a file.

`revperception export` writes a level as ONNX (ONNX Runtime, TensorRT on a vehicle GPU) or as OpenVINO IR, with
the metadata keys Ultralytics writes (names, imgsz, stride, task, batch), so Ultralytics' `YOLO(path)` loads it
too. The OpenVINO backend converts the same network in memory (`to_openvino`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from revperception.checkpoint import load_reversible, read_metadata
from revperception.io import atomic_write_bytes, fsync_dir
from revperception.runtime import ReversibleModel

FORMATS = ("onnx", "openvino")
ONNX_OPSET = 17  # what TensorRT 8.6+ and ONNX Runtime 1.16+ read


class DetectionOutput(nn.Module):
    """A plain network that returns only the decoded (B, 4 + nc, anchors) tensor. Ultralytics heads are put in
    export mode, deriving their anchors from the input's shape in the graph rather than from a Python-side cache
    that a trace would freeze."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()
        for module in self.net.modules():
            if hasattr(module, "export") and hasattr(module, "dynamic"):
                module.export, module.dynamic = True, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class BackendError(RuntimeError):
    """A backend is missing or cannot run as asked (never answered by a silent fallback)."""


def import_openvino() -> Any:
    """The openvino module, or a clear error saying how to get it."""
    try:
        import openvino
    except ImportError as err:
        raise BackendError("backend/format openvino needs the `openvino` package (pinned in requirements.txt: "
                           "`make setup`, or `pip install openvino`); backend torch needs nothing more") from err
    return openvino


@torch.no_grad()
def to_openvino(net: nn.Module, imgsz: int, *, dynamic: bool = True) -> Any:
    """`net` (fp32) as an in-memory OpenVINO model; `dynamic`: any batch and input height/width."""
    ov = import_openvino()
    example = torch.zeros(1, 3, imgsz, imgsz)
    shape = [-1, 3, -1, -1] if dynamic else list(example.shape)
    return ov.convert_model(DetectionOutput(net), example_input=example, input=[shape])


def level_metadata(names: dict[int, str], imgsz: int, stride: int, **extra: Any) -> dict[str, Any]:
    """Ultralytics' export metadata keys, plus ours (level, checkpoint hash)."""
    return {"task": "detect", "batch": 1, "imgsz": [imgsz, imgsz], "stride": stride, "names": dict(names), **extra}


def export_level(checkpoint: str | Path, level: str, fmt: str, out: str | Path) -> Path:
    """Write `level` of `checkpoint` to `out` as `fmt` at the level's own input size (batch 1, static shape):
    a `.onnx` file, or for openvino a folder holding `<name>.xml`, `.bin` and `metadata.yaml` (Ultralytics'
    layout). Nothing is replaced until the new file or folder is complete."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    pruned = load_reversible(checkpoint)
    if level not in pruned.levels.names:
        raise ValueError(f"no level {level!r} in {checkpoint}; levels are {', '.join(pruned.levels.names)}")
    imgsz = pruned.levels.size(level, pruned.imgsz)
    model = ReversibleModel(pruned.model, pruned.groups, pruned.levels, channels_last=False, private=pruned.private)
    net = model.standalone(level)
    metadata = level_metadata(pruned.names, imgsz, pruned.stride, level=level, checkpoint=Path(checkpoint).name,
                              weights_sha256=read_metadata(checkpoint)["weights_sha256"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _write_onnx(net, imgsz, metadata, out)
    else:
        _write_openvino(net, imgsz, metadata, out)
    return out


def _write_onnx(net: nn.Module, imgsz: int, metadata: dict[str, Any], out: Path) -> None:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "level.onnx"
        torch.onnx.export(DetectionOutput(net), (torch.zeros(1, 3, imgsz, imgsz),), str(path),
                          input_names=["images"], output_names=["output0"], opset_version=ONNX_OPSET, dynamo=False)
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.checker.check_model(proto)
        atomic_write_bytes(out, proto.SerializeToString())


def _write_openvino(net: nn.Module, imgsz: int, metadata: dict[str, Any], out: Path) -> None:
    ov = import_openvino()
    model = to_openvino(net, imgsz, dynamic=False)
    for key, value in metadata.items():
        model.set_rt_info(str(value), ["model_info", key])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        staged.mkdir()
        ov.save_model(model, str(staged / f"{out.name.removesuffix('_openvino_model')}.xml"), compress_to_fp16=False)
        (staged / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8")
        if out.exists():  # replace a previous export whole: move it aside, move the new one in, then delete it
            old = Path(tmp) / "previous"
            os.replace(out, old)
        os.replace(staged, out)
        fsync_dir(out.parent)
