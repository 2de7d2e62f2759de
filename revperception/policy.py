"""LevelPolicy: which architecture should run now, from anomaly messages, a force hold and the clock.

Pure Python with an injected clock, so every rule has exact unit tests and the node only wires it:
- an anomaly, a force-full hold, or (with a timeout) a silent anomaly detector means the full level;
- the calm level returns only after the anomaly has been false for `clear_hold_s` (hysteresis);
- a silent detector counts from the policy's start, so one that never speaks is caught too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from revperception.pruning import FULL, PRUNED


def _duration(name: str, value: float) -> float:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class Decision:
    """The level wanted now and why: 'anomaly', 'forced', 'timeout', 'hold' (hysteresis) or 'calm'."""

    level: str
    reason: str


class LevelPolicy:
    """Anomaly/hysteresis/timeout/force-full state machine. Not thread-safe: the caller serialises it."""

    def __init__(self, *, calm_level: str = PRUNED, alert_level: str = FULL, clear_hold_s: float = 2.0,
                 timeout_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.calm_level = calm_level
        self.alert_level = alert_level
        self.clock = clock
        self.clear_hold_s = clear_hold_s
        self.timeout_s = timeout_s
        self.anomaly = False
        self.forced = False
        self._started = clock()
        self._last_message: float | None = None
        self._calm_since: float | None = None  # when the last alert (anomaly or timeout) ended

    @property
    def clear_hold_s(self) -> float:
        return self._clear_hold_s

    @clear_hold_s.setter
    def clear_hold_s(self, value: float) -> None:
        self._clear_hold_s = _duration("anomaly_clear_hold_s", value)

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._timeout_s = _duration("anomaly_timeout_s", value)

    def message_age(self) -> float | None:
        """Seconds since the last anomaly message, or None before the first."""
        return None if self._last_message is None else self.clock() - self._last_message

    def on_anomaly(self, anomaly: bool) -> Decision:
        """Record one anomaly message (true = anomaly) and decide."""
        now = self.clock()
        was_alert = self.anomaly or self._timed_out(now)
        self._last_message = now
        if was_alert and not anomaly:
            self._calm_since = now
        self.anomaly = bool(anomaly)
        return self.decide()

    def force_full(self, hold: bool) -> Decision:
        """Hold the full level regardless of anomalies (True) or release the hold (False)."""
        self.forced = bool(hold)
        return self.decide()

    def decide(self) -> Decision:
        """The level wanted at the clock's current time."""
        now = self.clock()
        if self.forced:
            return Decision(self.alert_level, "forced")
        if self.anomaly:
            return Decision(self.alert_level, "anomaly")
        if self._timed_out(now):
            return Decision(self.alert_level, "timeout")
        if self._calm_since is not None and now - self._calm_since < self.clear_hold_s:
            return Decision(self.alert_level, "hold")
        return Decision(self.calm_level, "calm")

    def next_change(self) -> float | None:
        """Seconds until `decide()` may change with no new input (a hold ends, or the detector's silence
        reaches the timeout); None when only an input can change it. Lets a caller wake once, on time,
        instead of polling."""
        now = self.clock()
        if self.forced or self.anomaly or self._timed_out(now):
            return None
        deadlines = []
        if self._calm_since is not None and now - self._calm_since < self.clear_hold_s:
            deadlines.append(self._calm_since + self.clear_hold_s - now)
        if self.timeout_s > 0:
            since = self._started if self._last_message is None else self._last_message
            deadlines.append(since + self.timeout_s - now)
        return min(deadlines, default=None)

    def _timed_out(self, now: float) -> bool:
        since = self._started if self._last_message is None else self._last_message
        return self.timeout_s > 0 and now - since >= self.timeout_s
