"""Anomaly injection schedules: when to publish which std_msgs/Bool, from `--at` options and YAML files.

A schedule says at which times (seconds, relative to the injector's start, or to the first /clock of a
replayed bag) the anomaly flag becomes true or false. It comes from `--at TIME:VALUE` options, from a YAML
file, or both merged::

    topic: anomaly          # optional; `--topic` wins, else this, else "anomaly"
    events:
      - {at: 5.0, value: true}
      - {at: 9.0, value: false}

Values are true/false/1/0 (YAML booleans or strings). Events are sorted by time; two events at the same
time, a negative time or any other value is an error. `into_bag` writes the events into a copy of a bag
instead, so `ros2 bag play` (or `revperception replay`) injects them in step with the recorded data.
No rclpy here: `revperception.tools.inject` publishes live.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from revperception.bags import BagError, bag_info, copy_with, typestore

DEFAULT_TOPIC = "anomaly"
BOOL_TYPE = "std_msgs/msg/Bool"
_VALUES = {"true": True, "1": True, "false": False, "0": False}


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the offending event or file."""


@dataclass(frozen=True, order=True)
class Event:
    """Publish `value` at `at` seconds."""

    at: float
    value: bool


@dataclass(frozen=True)
class Schedule:
    """Events in time order, for one topic."""

    topic: str
    events: tuple[Event, ...]


def parse_value(value: object, where: str) -> bool:
    """true/false/1/0 (a YAML boolean, an integer or a string, any case) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _VALUES:
        raise ScheduleError(f"{where}: value must be true, false, 1 or 0, got {value!r}")
    return _VALUES[text]


def make_event(at: object, value: object, where: str) -> Event:
    """One validated event: a finite, non-negative time and a boolean value."""
    try:
        seconds = float(at)
    except (TypeError, ValueError):
        raise ScheduleError(f"{where}: time must be a number of seconds, got {at!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ScheduleError(f"{where}: time must be finite and >= 0, got {at!r}")
    return Event(seconds, parse_value(value, where))


def parse_at(text: str) -> Event:
    """`TIME:VALUE` as given to `--at`, e.g. `5.0:true`."""
    at, sep, value = text.partition(":")
    if not sep:
        raise ScheduleError(f"--at {text!r}: expected TIME:VALUE, e.g. 5.0:true")
    return make_event(at, value, f"--at {text!r}")


def load_schedule(path: Path | str) -> tuple[str | None, list[Event]]:
    """The topic (None when the file names none) and the events of a schedule YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScheduleError(f"schedule {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ScheduleError(f"schedule {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise ScheduleError(f"schedule {path}: expected a mapping with an `events:` list")
    unknown = set(data) - {"topic", "events"}
    if unknown:
        raise ScheduleError(f"schedule {path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    events = []
    for i, item in enumerate(data["events"]):
        where = f"schedule {path}, event {i}"
        if not isinstance(item, dict) or set(item) != {"at", "value"}:
            raise ScheduleError(f"{where}: expected {{at: SECONDS, value: true|false}}, got {item!r}")
        events.append(make_event(item["at"], item["value"], where))
    topic = data.get("topic")
    if topic is not None and (not isinstance(topic, str) or not topic):
        raise ScheduleError(f"schedule {path}: topic must be a non-empty string, got {topic!r}")
    return topic, events


def build_schedule(at: Sequence[str] = (), schedule: Path | str | None = None, topic: str | None = None) -> Schedule:
    """`--at` events merged with a schedule file's, sorted; `topic` beats the file's topic, then DEFAULT_TOPIC."""
    events = [parse_at(text) for text in at]
    file_topic = None
    if schedule is not None:
        file_topic, loaded = load_schedule(schedule)
        events += loaded
    if not events:
        raise ScheduleError("no events: give --at TIME:VALUE or --schedule FILE")
    events.sort()
    for before, after in itertools.pairwise(events):
        if before.at == after.at:
            raise ScheduleError(f"two events at {after.at:g} s: each time may appear once")
    return Schedule(topic or file_topic or DEFAULT_TOPIC, tuple(events))


def bag_topic(topic: str) -> str:
    """The absolute name a relative topic resolves to in the root namespace, as bags store names."""
    return topic if topic.startswith("/") else f"/{topic}"


def into_bag(bag: Path | str, schedule: Schedule, out: Path | str | None = None) -> Path:
    """A copy of `bag` (default `<bag>-injected`) with the events on the schedule's topic at bag start + at."""
    bag = Path(bag)
    out = Path(out) if out is not None else bag.with_name(f"{bag.name}-injected")
    if out.exists():
        raise BagError(f"{out} exists already, not overwriting")
    store = typestore()
    start_ns = bag_info(bag).start_ns
    topic = bag_topic(schedule.topic)
    messages = [(topic, start_ns + round(e.at * 1e9),
                 bytes(store.serialize_cdr(store.types[BOOL_TYPE](data=e.value), BOOL_TYPE)))
                for e in schedule.events]
    return copy_with(bag, out, messages, topic, BOOL_TYPE)
