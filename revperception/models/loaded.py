"""What loading a model gives: the network, its class names and stride, and the `arch` that rebuilds it.

Its own module so that the loader and the release-checkpoint reader both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

ULTRALYTICS = "ultralytics"
YOLOV5_RELEASE = "yolov5-release"  # original ultralytics/yolov5 checkpoints, anchor-based head (models/release.py)


@dataclass
class LoadedModel:
    """A detection network with what is needed to run and rebuild it."""

    model: nn.Module
    names: dict[int, str]
    stride: int
    source: str
    arch: dict[str, Any]  # {"family": ..., "cfg": model config dict}
