"""Image in, detections out: letterbox pre-processing, the network, NMS, boxes in image pixels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from ultralytics.data.augment import LetterBox
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes


@dataclass(frozen=True)
class Detections:
    """Detections of one image; boxes are xyxy in the original image's pixels."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    names: dict[int, str]
    level: str = ""  # the architecture level that produced them, for reversible models

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def class_names(self) -> list[str]:
        return [self.names[int(c)] for c in self.class_ids]


class Detector:
    """Runs a detection network whose eval output is Ultralytics' (B, 4 + nc, anchors) layout.

    Both families end in that layout (the anchor-based release head folds objectness into the
    class scores), so pre- and post-processing are shared and identical for every model.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        names: dict[int, str],
        *,
        stride: int = 32,
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        classes: list[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        self.names = dict(names)
        self.stride = stride
        self.imgsz = imgsz
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.classes = classes
        self._letterboxes: dict[int, LetterBox] = {}

    def preprocess(self, image: np.ndarray, *, bgr: bool = True, imgsz: int | None = None) -> torch.Tensor:
        """HWC uint8 image (BGR by default, as OpenCV gives it) -> normalised 1x3xHxW RGB tensor, letterboxed to
        `imgsz` (default: the detector's)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        size = imgsz or self.imgsz
        if size not in self._letterboxes:  # minimum rectangle: a 640x480 frame runs at 640x480, not 640x640
            self._letterboxes[size] = LetterBox(new_shape=(size, size), auto=True, stride=self.stride)
        padded = self._letterboxes[size](image=image)
        if bgr:
            padded = padded[..., ::-1]
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1))
        return torch.from_numpy(chw).to(self.device).unsqueeze(0).float().div_(255.0)

    def postprocess(self, raw: torch.Tensor, input_hw: tuple[int, int], image_hw: tuple[int, int]) -> Detections:
        """NMS on the raw head output, then boxes mapped back from the letterboxed input to the image."""
        det = non_max_suppression(
            raw, self.conf, self.iou, classes=self.classes, max_det=self.max_det, nc=len(self.names)
        )[0]
        boxes = scale_boxes(input_hw, det[:, :4].clone(), image_hw)
        return Detections(
            boxes=boxes.cpu().numpy().astype(np.float32),
            scores=det[:, 4].cpu().numpy().astype(np.float32),
            class_ids=det[:, 5].cpu().numpy().astype(np.int64),
            names=self.names,
        )

    @torch.inference_mode()
    def predict(self, image: np.ndarray, *, bgr: bool = True) -> Detections:
        x = self.preprocess(image, bgr=bgr)
        raw = self.model(x)
        if isinstance(raw, (tuple, list)):
            raw = raw[0]
        return self.postprocess(raw, tuple(x.shape[2:]), image.shape[:2])
