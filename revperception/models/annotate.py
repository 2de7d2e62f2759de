"""Detections drawn onto a frame with OpenCV only (Ultralytics' plotting would try to download a font)."""

from __future__ import annotations

import cv2
import numpy as np

from revperception.models.detector import Detections

_PALETTE = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0))


def annotate(image: np.ndarray, detections: Detections, *, banner: str | None = None) -> np.ndarray:
    """A BGR copy of `image` with boxes, class names and scores, and an optional banner (e.g. the level)."""
    out = image.copy()
    scale = max(0.4, min(out.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for (x1, y1, x2, y2), score, cls, name in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                  detections.class_ids.tolist(), detections.class_names, strict=True):
        colour = _PALETTE[int(cls) % len(_PALETTE)]
        top_left = (round(x1), round(y1))
        cv2.rectangle(out, top_left, (round(x2), round(y2)), colour, thickness)
        _label(out, f"{name} {score:.2f}", top_left, colour, scale=scale, thickness=thickness)
    if banner:
        _label(out, banner, (0, 0), (0, 0, 0), scale=scale * 1.2, thickness=thickness, below=True)
    return out


def _label(image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int], *, scale: float,
           thickness: int, below: bool = False) -> None:
    """Text on a filled box, above `corner` (or below it when there is no room or `below`)."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = corner
    top = y if below or y - h - base < 0 else y - h - base
    cv2.rectangle(image, (x, top), (x + w, top + h + base), colour, -1)
    cv2.putText(image, text, (x, top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
