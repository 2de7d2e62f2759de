"""Build a YOLOv5 from what users have: an Ultralytics model YAML or checkpoint, or a yolov5 release checkpoint.

Every loaded model carries its `arch` (family + model config dict), from which `build_model` rebuilds
the same network with fresh weights: checkpoints store `arch` and tensors, never pickled modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import ROOT, YAML

from revperception.models.loaded import ULTRALYTICS, YOLOV5_RELEASE, LoadedModel
from revperception.models.release import build_release_model, is_release_checkpoint, load_release_checkpoint

# Ultralytics ships the COCO class names, so YAML-built 80-class models get real names offline.
_COCO_NAMES: dict[int, str] = YAML.load(ROOT / "cfg/datasets/coco.yaml")["names"]



def _names_for(model: nn.Module, nc: int) -> dict[int, str]:
    names = getattr(model, "names", None)
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if names and any(str(k) != v for k, v in names.items()):
        return {int(k): str(v) for k, v in names.items()}
    return dict(_COCO_NAMES) if nc == 80 else {i: f"class{i}" for i in range(nc)}


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The network described by `arch`, with fresh weights, in eval mode."""
    family = arch.get("family")
    if family == ULTRALYTICS:
        return DetectionModel(dict(arch["cfg"]), verbose=False).float().eval()
    if family == YOLOV5_RELEASE:
        return build_release_model(arch["cfg"])
    raise ValueError(f"unknown model family {family!r}")


def load_model(weights: str | Path) -> LoadedModel:
    """Load `weights`: a model YAML (e.g. yolov5n.yaml, fresh weights), or an Ultralytics or yolov5 release .pt."""
    weights = str(weights)
    if weights.endswith((".yaml", ".yml")):
        model = DetectionModel(weights, verbose=False)
    elif weights.endswith(".pt"):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no such checkpoint: {weights}")
        if is_release_checkpoint(weights):
            return load_release_checkpoint(weights)
        model, _ = load_checkpoint(weights, device="cpu", fuse=False)
    else:
        raise ValueError(f"unsupported weights {weights!r}: expected a model .yaml or a .pt checkpoint")
    model = model.float().eval()
    nc = int(model.yaml["nc"])
    return LoadedModel(
        model=model, names=_names_for(model, nc), stride=int(model.stride.max()), source=weights,
        arch={"family": ULTRALYTICS, "cfg": dict(model.yaml)},
    )
