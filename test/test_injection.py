"""Anomaly schedules: parsing and validation, live injection over DDS, and injection into a bag."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, revperception, stop_process
from revperception.bags import bag_info, read_messages, read_raw, write_image_bag
from revperception.injection import Event, ScheduleError, build_schedule, parse_at
from revperception.tools.synthetic import road_frame

START_NS = 1_700_000_000_000_000_000


def test_at_and_schedule_file_merge_sorted(tmp_path: Path) -> None:
    schedule = tmp_path / "s.yaml"
    schedule.write_text("topic: fog\nevents:\n  - {at: 9.0, value: false}\n  - {at: 1, value: 1}\n")
    merged = build_schedule(["5.0:true", "12:0"], schedule)
    assert merged.topic == "fog"
    assert merged.events == (Event(1.0, True), Event(5.0, True), Event(9.0, False), Event(12.0, False))
    assert build_schedule(["0:TRUE"], schedule, topic="anomaly").topic == "anomaly"
    assert build_schedule(["0:false"]).topic == "anomaly"


@pytest.mark.parametrize(("at", "message"), [
    (["5.0:true", "5:false"], "two events at 5 s"),
    (["-1:true"], ">= 0"),
    (["2:maybe"], "true, false, 1 or 0"),
    (["2"], "expected TIME:VALUE"),
    (["soon:true"], "number of seconds"),
    ([], "no events"),
])
def test_bad_events_are_errors(at: list[str], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        build_schedule(at)


@pytest.mark.parametrize(("text", "message"), [
    ("events: 3\n", "`events:` list"),
    ("events:\n  - {at: 1}\n", "event 0"),
    ("events:\n  - {at: 1, value: yes please}\n", "true, false, 1 or 0"),
    ("events: []\nrate: 3\n", "unknown keys rate"),
    ("events: [\n", "not valid YAML"),
])
def test_malformed_schedule_file_fails_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    schedule = tmp_path / "s.yaml"
    schedule.write_text(text)
    with pytest.raises(ScheduleError, match=message):
        build_schedule(["1:true"], schedule)
    proc = revperception("inject", "--schedule", str(schedule), "--into-bag", str(tmp_path / "no-bag"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert message.split(maxsplit=1)[0] in proc.stderr


def test_parse_at() -> None:
    assert parse_at("2.5:1") == Event(2.5, True)


@pytest.mark.slow
def test_live_injection_reaches_a_subscriber_in_order(ros_context: None) -> None:
    import rclpy
    from std_msgs.msg import Bool

    from revperception.ros import qos
    from revperception.ros.spin import spin_until

    node = rclpy.create_node("test_inject_listener")
    received: list[tuple[float, bool]] = []
    node.create_subscription(Bool, "/inject_test", lambda m: received.append((time.monotonic(), m.data)),
                             qos.ANOMALY)
    proc = subprocess.Popen([str(BIN / "revperception"), "inject", "--topic", "/inject_test", "--at", "0.2:true",
                             "--at", "1.2:false", "--at", "1.7:1", "--wait-for", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert spin_until(node, lambda: len(received) == 3, timeout_s=60), received
        assert proc.wait(timeout=60) == 0, proc.communicate()[1]
    finally:
        stop_process(proc)
        node.destroy_node()
    assert [value for _, value in received] == [True, False, True]
    assert "published 3 of 3 events" in proc.communicate()[0]


@pytest.mark.slow
def test_injection_on_bag_time_is_never_early(ros_context: None) -> None:
    """The test is the clock: it publishes /clock in small steps and checks that every event arrives only once the
    clock it has published reaches the event's time (when, in wall time, is left to the benchmarks)."""
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Bool

    from revperception.ros import qos
    from revperception.ros.spin import spin_until

    node = rclpy.create_node("test_inject_clock")
    clock = node.create_publisher(Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    published = [-0.05]  # bag seconds of the latest /clock sent, counted from the first (none sent yet)
    received: list[tuple[float, bool]] = []
    node.create_subscription(Bool, "/inject_clock", lambda m: received.append((published[0], m.data)), qos.ANOMALY)
    proc = subprocess.Popen([str(BIN / "revperception"), "inject", "--topic", "/inject_clock", "--at", "0.5:true",
                             "--at", "1.5:false", "--at", "2.0:1", "--relative-to", "bag", "--wait-for", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def tick() -> bool:
        """Send the next /clock step (50 ms of bag time per turn) until the three events are in."""
        if len(received) < 3:
            published[0] = round(published[0] + 0.05, 2)
            nanoseconds = 100_000_000_000 + round(published[0] * 1e9)
            clock.publish(Clock(clock=Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)))
        return len(received) == 3

    try:
        assert spin_until(node, lambda: clock.get_subscription_count() > 0, 60.0), "the injector never subscribed"
        assert spin_until(node, tick, 120.0), received
        assert proc.wait(timeout=60) == 0, proc.communicate()[1]
    finally:
        stop_process(proc)
        node.destroy_node()
    assert [value for _, value in received] == [True, False, True]
    for (clock_s, _), due_s in zip(received, (0.5, 1.5, 2.0), strict=True):
        assert clock_s >= due_s, f"an event due at {due_s} s of bag time arrived at {clock_s} s"


@pytest.mark.slow
def test_into_bag_adds_events_at_bag_start_plus_at(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "drive", [(START_NS + i * 100_000_000, road_frame(i)[::8, ::8])
                                                for i in range(10)], storage="mcap")
    proc = revperception("inject", "--at", "0.25:true", "--at", "0.5:false", "--into-bag", str(bag))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "drive-injected"
    info = bag_info(out)
    assert info.storage == "mcap"
    assert info.topics["/anomaly"].msgtype == "std_msgs/msg/Bool"
    assert info.topics["/camera/image_raw"].count == 10
    assert [data for *_, data in read_raw(out, ["/camera/image_raw"])] == [data for *_, data in read_raw(bag)]
    events = [(t, msg.data) for _, t, msg in read_messages(out, ["/anomaly"])]
    assert events == [(START_NS + 250_000_000, True), (START_NS + 500_000_000, False)]
    times = [t for _, t, _ in read_raw(out)]
    assert times == sorted(times)
    again = revperception("inject", "--at", "1:true", "--into-bag", str(bag))
    assert again.returncode == 1 and "exists already" in again.stderr
    custom = revperception("inject", "--at", "1:true", "--into-bag", str(bag), "--out", str(tmp_path / "x"))
    assert custom.returncode == 0 and bag_info(tmp_path / "x").topics["/anomaly"].count == 1
