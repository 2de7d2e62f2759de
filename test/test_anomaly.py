"""The anomaly monitor's logic: image quality on synthetic scenes, hysteresis and stall, with the time passed in."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from revperception.anomaly import AnomalyMonitor, ImageQuality, Thresholds, measure
from revperception.tools.synthetic import add_fog, road_frame

FRAMES = range(0, 40, 3)
CLEAR = measure(road_frame(0))


def fog(frame: np.ndarray, density: float = 0.6) -> np.ndarray:
    return add_fog(frame, density)


def dark(frame: np.ndarray) -> np.ndarray:
    return (frame * 0.15).astype(np.uint8)


def blur(frame: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), 6)


FOGGY = measure(fog(road_frame(0)))


@pytest.mark.parametrize("size", [(640, 480), (320, 240), (1280, 720)])
def test_clear_frames_pass_with_margin_at_any_size(size: tuple[int, int]) -> None:
    limits = Thresholds()
    for i in FRAMES:
        quality = measure(road_frame(i, *size))
        assert limits.failures(quality) == []
        assert quality.contrast > 1.5 * limits.min_contrast
        assert quality.brightness > 2 * limits.min_brightness
        assert quality.sharpness > 4 * limits.min_sharpness


@pytest.mark.parametrize(("degrade", "reason"), [(fog, "low contrast"), (lambda f: fog(f, 0.8), "low contrast"),
                                                 (dark, "low brightness"), (blur, "low sharpness")])
def test_each_degradation_fails_its_own_threshold_only(degrade, reason: str) -> None:
    for i in FRAMES:
        failures = Thresholds().failures(measure(degrade(road_frame(i))))
        assert len(failures) == 1 and failures[0].startswith(reason), failures


def test_quality_measures_half_size_frames_alike_and_grey_frames_too() -> None:
    frame = road_frame(5)
    full, half = measure(frame), measure(frame[::2, ::2])
    assert half.contrast == pytest.approx(full.contrast, rel=0.05)
    assert half.brightness == pytest.approx(full.brightness, rel=0.05)
    assert half.sharpness == pytest.approx(full.sharpness, rel=0.25)
    grey = measure(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    assert (grey.contrast, grey.brightness, grey.sharpness) == pytest.approx(
        (full.contrast, full.brightness, full.sharpness), rel=0.02)


def test_a_flat_frame_fails_contrast_and_sharpness_without_dividing_by_zero() -> None:
    assert measure(np.zeros((48, 64, 3), np.uint8)) == ImageQuality(0.0, 0.0, 0.0)
    failures = Thresholds().failures(measure(np.full((48, 64, 3), 128, np.uint8)))
    assert [f.split()[1] for f in failures] == ["contrast", "sharpness"]


def test_reasons_say_the_value_and_the_threshold() -> None:
    quality = ImageQuality(contrast=0.05, brightness=0.5, sharpness=0.1)
    assert Thresholds(min_contrast=0.12).failures(quality) == ["low contrast 0.050 < 0.120"]
    with pytest.raises(ValueError, match="min_brightness"):
        Thresholds(min_brightness=-1)


def feed(monitor: AnomalyMonitor, quality: ImageQuality, start: float, end: float, *, period: float = 0.1,
         detections: bool = True) -> None:
    """Frames (and detections) every `period` seconds from `start` up to, not including, `end`."""
    for k in range(round((end - start) / period)):
        now = start + k * period
        monitor.on_image(quality, now)
        if detections:
            monitor.on_detections(now)


def test_clear_frames_stay_quiet() -> None:
    monitor = AnomalyMonitor()
    feed(monitor, CLEAR, 0.0, 10.0)
    assert monitor.state(10.0) == (False, [])


def test_a_single_degraded_frame_does_not_raise() -> None:
    monitor = AnomalyMonitor(raise_after_s=0.3)
    feed(monitor, CLEAR, 0.0, 1.0)
    monitor.on_image(FOGGY, 1.0)
    monitor.on_detections(1.0)
    feed(monitor, CLEAR, 1.1, 3.0)
    assert monitor.state(3.0) == (False, [])


def test_fog_raises_after_the_hold_and_a_single_clear_frame_does_not_clear() -> None:
    monitor = AnomalyMonitor(raise_after_s=0.3, clear_after_s=1.0)
    feed(monitor, FOGGY, 0.0, 0.3)  # frames at 0.0, 0.1, 0.2: not yet held for 0.3 s
    assert monitor.state(0.25) == (False, [])
    feed(monitor, FOGGY, 0.3, 0.4)
    anomaly, reasons = monitor.state(0.35)
    assert anomaly and len(reasons) == 1 and reasons[0].startswith("low contrast 0.12")
    monitor.on_image(CLEAR, 0.4)  # one clear frame in the fog
    assert monitor.state(0.4) == (True, ["image quality clearing: 0.0 s of 1.0 s"])
    feed(monitor, FOGGY, 0.5, 2.0)
    assert monitor.state(2.0)[0]
    feed(monitor, CLEAR, 2.0, 2.95)  # clear frames for 0.9 s: still held
    assert monitor.state(2.95)[0]
    feed(monitor, CLEAR, 3.0, 3.1)  # a clear frame 1.0 s after the first
    assert monitor.state(3.05) == (False, [])


def test_hysteresis_can_be_changed_at_run_time() -> None:
    monitor = AnomalyMonitor(raise_after_s=10.0, clear_after_s=10.0)
    feed(monitor, FOGGY, 0.0, 1.0)
    assert not monitor.state(1.0)[0]
    monitor.set_hold(raise_after_s=0.0, clear_after_s=0.0)
    monitor.on_image(FOGGY, 1.0)
    assert monitor.state(1.0)[0]
    monitor.on_image(CLEAR, 1.1)
    assert not monitor.state(1.1)[0]


def test_images_without_detections_stall_after_a_start_up_grace() -> None:
    monitor = AnomalyMonitor(stall_timeout_s=2.0, clear_after_s=1.0)
    feed(monitor, CLEAR, 0.0, 2.0, detections=False)
    assert monitor.state(2.0) == (False, [])  # grace: 2 s from the first image
    feed(monitor, CLEAR, 2.0, 3.1, detections=False)
    assert monitor.state(3.1) == (True, ["stalled: no detections for 3.1 s"])
    monitor.on_detections(3.2)
    feed(monitor, CLEAR, 3.2, 4.2)
    assert monitor.state(4.1) == (True, ["stall clearing: 0.9 s of 1.0 s"])  # detections back, held
    assert monitor.state(4.25) == (False, [])


def test_detections_that_stop_while_images_arrive_stall() -> None:
    monitor = AnomalyMonitor(stall_timeout_s=2.0)
    feed(monitor, CLEAR, 0.0, 5.0)
    feed(monitor, CLEAR, 5.0, 7.0, detections=False)
    assert not monitor.state(6.9)[0]  # silent for 2.0 s: not longer than the timeout
    feed(monitor, CLEAR, 7.0, 7.2, detections=False)
    assert monitor.state(7.1) == (True, ["stalled: no detections for 2.2 s"])


def test_no_images_is_not_a_stall_but_shows_in_the_image_age() -> None:
    monitor = AnomalyMonitor(stall_timeout_s=2.0, clear_after_s=0.0)
    assert monitor.state(100.0) == (False, []) and monitor.image_age(100.0) is None
    feed(monitor, CLEAR, 0.0, 1.0)
    assert monitor.state(50.0) == (False, [])  # camera and pipeline both gone: not this monitor's anomaly
    assert monitor.image_age(50.0) == pytest.approx(49.1) and monitor.detections_age(50.0) == pytest.approx(49.1)
    feed(monitor, CLEAR, 60.0, 61.5, detections=False)  # the camera returns: a fresh start-up grace
    assert monitor.state(61.5) == (False, [])
    feed(monitor, CLEAR, 61.5, 62.5, detections=False)
    assert monitor.state(62.5)[0]


def test_fog_and_a_stall_together_give_both_reasons() -> None:
    monitor = AnomalyMonitor(raise_after_s=0.0, stall_timeout_s=1.0)
    feed(monitor, FOGGY, 0.0, 1.5, detections=False)
    anomaly, reasons = monitor.state(1.5)
    assert anomaly and [r.split()[0] for r in reasons] == ["low", "stalled:"]


def test_bad_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="stall_timeout_s"):
        AnomalyMonitor(stall_timeout_s=0.0)
    with pytest.raises(ValueError, match="clear_after_s"):
        AnomalyMonitor(clear_after_s=-1.0)
