"""Every rule of LevelPolicy, exactly, on an injected clock."""

from __future__ import annotations

import pytest

from revperception.policy import Decision, LevelPolicy
from revperception.pruning import FULL, PRUNED


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_calm_at_start_and_full_on_anomaly(clock: Clock) -> None:
    policy = LevelPolicy(clock=clock)
    assert policy.decide() == Decision(PRUNED, "calm")
    assert policy.on_anomaly(True) == Decision(FULL, "anomaly")
    assert policy.on_anomaly(True) == Decision(FULL, "anomaly")


def test_returns_to_pruned_only_after_the_clear_hold(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=2.0, clock=clock)
    policy.on_anomaly(True)
    clock.now += 10
    assert policy.on_anomaly(False) == Decision(FULL, "hold")
    clock.now += 1.999
    assert policy.on_anomaly(False) == Decision(FULL, "hold")  # repeated false does not restart the hold
    clock.now += 0.001
    assert policy.decide() == Decision(PRUNED, "calm")


def test_an_anomaly_during_the_hold_restarts_it(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=2.0, clock=clock)
    policy.on_anomaly(True)
    policy.on_anomaly(False)
    clock.now += 1.5
    assert policy.on_anomaly(True).level == FULL
    clock.now += 0.1
    policy.on_anomaly(False)
    clock.now += 1.5
    assert policy.decide() == Decision(FULL, "hold")
    clock.now += 0.5
    assert policy.decide().level == PRUNED


def test_zero_hold_returns_at_once(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=0.0, clock=clock)
    policy.on_anomaly(True)
    assert policy.on_anomaly(False) == Decision(PRUNED, "calm")


def test_a_silent_detector_is_an_anomaly(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=1.0, timeout_s=0.5, clock=clock)
    clock.now += 0.25
    assert policy.decide().level == PRUNED
    clock.now += 0.25  # never heard from since the start
    assert policy.decide() == Decision(FULL, "timeout")
    assert policy.on_anomaly(False) == Decision(FULL, "hold")  # speaking again ends the timeout, then hysteresis
    for _ in range(3):  # messages every 0.25 s, inside the timeout
        clock.now += 0.25
        assert policy.on_anomaly(False) == Decision(FULL, "hold")
    clock.now += 0.25
    assert policy.on_anomaly(False) == Decision(PRUNED, "calm")
    clock.now += 0.75  # a gap longer than the timeout is an alert, and the next message starts a new hold
    assert policy.decide() == Decision(FULL, "timeout")
    assert policy.on_anomaly(False) == Decision(FULL, "hold")


def test_no_timeout_when_off(clock: Clock) -> None:
    policy = LevelPolicy(timeout_s=0.0, clock=clock)
    clock.now += 1e6
    assert policy.decide().level == PRUNED
    assert policy.message_age() is None
    policy.on_anomaly(False)
    clock.now += 3
    assert policy.message_age() == pytest.approx(3)


def test_force_full_holds_over_calm_and_releases(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=2.0, clock=clock)
    assert policy.force_full(True) == Decision(FULL, "forced")
    assert policy.on_anomaly(False) == Decision(FULL, "forced")
    clock.now += 100
    assert policy.decide() == Decision(FULL, "forced")
    assert policy.force_full(False) == Decision(PRUNED, "calm")


def test_releasing_the_hold_during_an_anomaly_stays_full(clock: Clock) -> None:
    policy = LevelPolicy(clock=clock)
    policy.force_full(True)
    policy.on_anomaly(True)
    assert policy.force_full(False) == Decision(FULL, "anomaly")


def test_levels_are_configurable_and_anomaly_always_means_the_alert_level(clock: Clock) -> None:
    policy = LevelPolicy(calm_level="level1", clear_hold_s=0.0, clock=clock)
    assert policy.decide().level == "level1"
    assert policy.on_anomaly(True).level == FULL
    assert policy.on_anomaly(False).level == "level1"


@pytest.mark.parametrize("name", ["clear_hold_s", "timeout_s"])
def test_negative_durations_are_refused(clock: Clock, name: str) -> None:
    policy = LevelPolicy(clock=clock)
    with pytest.raises(ValueError, match=">= 0"):
        setattr(policy, name, -1.0)


def test_next_change_is_when_a_hold_or_the_silence_timeout_ends(clock: Clock) -> None:
    policy = LevelPolicy(clear_hold_s=2.0, timeout_s=5.0, clock=clock)
    assert policy.next_change() == pytest.approx(5.0)  # silent since start
    policy.on_anomaly(True)
    assert policy.next_change() is None  # only a message ends an anomaly
    clock.now += 1.0
    policy.on_anomaly(False)
    assert policy.next_change() == pytest.approx(2.0)  # the hold ends before the silence timeout
    clock.now += 2.0
    assert policy.decide() == Decision(PRUNED, "calm")
    assert policy.next_change() == pytest.approx(3.0)  # 5 s after the last message
    clock.now += 3.0
    assert policy.decide() == Decision(FULL, "timeout") and policy.next_change() is None
    policy.force_full(True)
    assert policy.next_change() is None
    assert LevelPolicy(clock=clock).next_change() is None  # no hold, no timeout: nothing changes by itself
