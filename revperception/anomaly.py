"""The reference anomaly monitor's logic: image quality, thresholds and a stalled-pipeline check.

Pure Python with the time passed in, so every rule has exact unit tests and the ROS node
(`revperception.ros.anomaly_monitor`) only wires it. Two signals raise the anomaly:
- degraded images: fog or haze (low relative contrast), darkness (low brightness), blur (low sharpness);
- a stalled pipeline: images keep arriving but no `detections` for longer than `stall_timeout_s`.
Both go through hysteresis so the flag does not chatter: a degraded image raises it only once every frame
for `raise_after_s` was degraded, and it clears only once every frame for `clear_after_s` was clear.
A camera that sends nothing is not this monitor's anomaly (the perception node has its own timeout);
`image_age` makes it visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ANALYSIS_WIDTH = 160  # frames are measured at this width: cheap, and sharpness comparable across cameras


@dataclass(frozen=True)
class ImageQuality:
    """What `measure` sees in a frame; each value is independent of the frame's size."""

    contrast: float  # RMS contrast relative to the mean (std / mean of grey): gain-invariant, falls in fog
    brightness: float  # mean grey, 0 (black) .. 1 (white)
    sharpness: float  # variance of the Laplacian / variance of grey at ANALYSIS_WIDTH: falls with blur only


def measure(frame_bgr: np.ndarray) -> ImageQuality:
    """The quality of a BGR (or grey) uint8 frame, measured on a grey copy ANALYSIS_WIDTH pixels wide.

    Contrast and sharpness are divided by the frame's own mean and variance so each cause moves one
    value: darkening keeps contrast and sharpness, fog keeps sharpness, blur keeps contrast.
    """
    height, width = frame_bgr.shape[:2]
    small = cv2.resize(frame_bgr, (ANALYSIS_WIDTH, max(1, round(height * ANALYSIS_WIDTH / width))),
                       interpolation=cv2.INTER_AREA)
    grey = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.float32)
    mean, variance = float(grey.mean()), float(grey.var())
    laplacian = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return ImageQuality(contrast=variance**0.5 / mean if mean > 0 else 0.0, brightness=mean / 255.0,
                        sharpness=laplacian / variance if variance > 1e-6 else 0.0)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class Thresholds:
    """Lowest acceptable quality. Defaults measured on `tools.synthetic` frames (test/test_anomaly.py keeps them so).

    Clear road frames: contrast 0.43, brightness 0.49, sharpness 0.12-0.14. Fog 0.6: contrast 0.125;
    darkened to 15 %: brightness 0.072; Gaussian blur sigma 6 (at 640 px): sharpness 0.0023.
    """

    min_contrast: float = 0.2
    min_brightness: float = 0.15
    min_sharpness: float = 0.02

    def __post_init__(self) -> None:
        _check_non_negative(**vars(self))

    def failures(self, quality: ImageQuality) -> list[str]:
        """One reason per value below its threshold, e.g. 'low contrast 0.052 < 0.200'; empty when clear."""
        checks = (("contrast", quality.contrast, self.min_contrast),
                  ("brightness", quality.brightness, self.min_brightness),
                  ("sharpness", quality.sharpness, self.min_sharpness))
        return [f"low {name} {value:.3f} < {low:.3f}" for name, value, low in checks if value < low]


class Latch:
    """A flag that turns on once its input has been true for `raise_after_s`, off once false for `clear_after_s`."""

    def __init__(self, raise_after_s: float, clear_after_s: float) -> None:
        _check_non_negative(raise_after_s=raise_after_s, clear_after_s=clear_after_s)
        self.raise_after_s, self.clear_after_s = float(raise_after_s), float(clear_after_s)
        self.on = False
        self._since: float | None = None  # since when the input has disagreed with `on`

    def update(self, condition: bool, now: float) -> bool:
        """Feed the input as seen at `now`; returns the flag."""
        if condition == self.on:
            self._since = None
            return self.on
        if self._since is None:
            self._since = now
        if now - self._since >= (self.raise_after_s if condition else self.clear_after_s):
            self.on, self._since = condition, None
        return self.on

    def pending_s(self, now: float) -> float:
        """How long the input has disagreed with the flag (0 when it agrees)."""
        return 0.0 if self._since is None else now - self._since


class AnomalyMonitor:
    """Degraded-image and stall state machine. Not thread-safe: the caller serialises it.

    Only frames that were measured count as arrivals (the node may measure every Nth). The stall clock
    starts at the later of the last detections and the start of the current run of images, so neither
    start-up nor a camera returning after a gap of over `stall_timeout_s` is mistaken for a stall.
    """

    def __init__(self, thresholds: Thresholds | None = None, *, raise_after_s: float = 0.3,
                 clear_after_s: float = 1.0, stall_timeout_s: float = 2.0) -> None:
        self.thresholds = thresholds or Thresholds()
        self.image = Latch(raise_after_s, clear_after_s)
        self.stall = Latch(0.0, clear_after_s)  # the timeout itself is the raise delay
        self.stall_timeout_s = stall_timeout_s
        self.quality: ImageQuality | None = None  # the last measured frame's
        self.failures: list[str] = []  # the last measured frame's
        self._last_image: float | None = None
        self._images_since: float | None = None  # start of the current run of images
        self._last_detections: float | None = None

    @property
    def stall_timeout_s(self) -> float:
        return self._stall_timeout_s

    @stall_timeout_s.setter
    def stall_timeout_s(self, value: float) -> None:
        if value <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {value}")
        self._stall_timeout_s = float(value)

    def set_hold(self, *, raise_after_s: float, clear_after_s: float) -> None:
        """Change the hysteresis at run time; a pending raise or clear keeps its start."""
        _check_non_negative(raise_after_s=raise_after_s, clear_after_s=clear_after_s)
        self.image.raise_after_s = float(raise_after_s)
        self.image.clear_after_s = self.stall.clear_after_s = float(clear_after_s)

    def on_image(self, quality: ImageQuality, now: float) -> None:
        """Record one measured frame."""
        if self._last_image is None or now - self._last_image > self.stall_timeout_s:
            self._images_since = now
        self._last_image = now
        self.quality = quality
        self.failures = self.thresholds.failures(quality)
        self.image.update(bool(self.failures), now)
        self._update_stall(now)

    def on_detections(self, now: float) -> None:
        """Record one detections message: the pipeline is alive (the stall's clear hold starts now)."""
        self._last_detections = now
        self._update_stall(now)

    def image_age(self, now: float) -> float | None:
        """Seconds since the last measured frame, or None before the first."""
        return None if self._last_image is None else now - self._last_image

    def detections_age(self, now: float) -> float | None:
        """Seconds since the last detections, or None before the first."""
        return None if self._last_detections is None else now - self._last_detections

    def _silence_s(self, now: float) -> float:
        """How long the pipeline has been silent while images arrive (0 when no images arrive)."""
        age = self.image_age(now)
        if age is None or age > self.stall_timeout_s:
            return 0.0
        since = self._images_since if self._last_detections is None else max(self._images_since,
                                                                             self._last_detections)
        return now - since

    def _update_stall(self, now: float) -> bool:
        return self.stall.update(self._silence_s(now) > self.stall_timeout_s, now)

    def state(self, now: float) -> tuple[bool, list[str]]:
        """The anomaly flag at `now` and why; the reasons are empty when it is false."""
        silence = self._silence_s(now)
        stalled = self._update_stall(now)
        reasons: list[str] = []
        if self.image.on:
            reasons += self.failures or [f"image quality clearing: {self.image.pending_s(now):.1f} s of "
                                         f"{self.image.clear_after_s:.1f} s"]
        if stalled:
            reasons.append(f"stalled: no detections for {silence:.1f} s" if silence > self.stall_timeout_s
                           else f"stall clearing: {self.stall.pending_s(now):.1f} s of "
                                f"{self.stall.clear_after_s:.1f} s")
        return bool(reasons), reasons
