"""Deterministic synthetic road scenes drawn with OpenCV: no data files, no downloads."""

from __future__ import annotations

import cv2
import numpy as np


def road_frame(index: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Frame `index` of a drive along a straight road: sky, asphalt, moving lane marks, a car ahead."""
    frame = np.empty((height, width, 3), np.uint8)
    horizon = height * 2 // 5
    frame[:horizon] = (235, 206, 135)  # sky (BGR)
    frame[horizon:] = (60, 120, 60)  # verge
    road = np.array([[width * 0.45, horizon], [width * 0.55, horizon], [width, height], [0, height]], np.int32)
    cv2.fillPoly(frame, [road], (70, 70, 70))
    for k in range(8):  # lane marks slide towards the camera as the car drives
        t = ((k + index * 0.25) % 8) / 8.0
        y0, y1 = horizon + (height - horizon) * t**2, horizon + (height - horizon) * min(1.0, (t + 0.06) ** 2)
        cv2.line(frame, (width // 2, int(y0)), (width // 2, int(y1)), (255, 255, 255), max(1, int(8 * t)))
    cx, size = width // 2 + int(40 * np.sin(index / 7.0)), 60 + (index % 20)
    top = horizon + 40
    cv2.rectangle(frame, (cx - size, top), (cx + size, top + size), (40, 40, 200), -1)  # a red car
    cv2.rectangle(frame, (cx - size + 10, top + 8), (cx + size - 10, top + size // 2), (90, 60, 40), -1)
    return frame
