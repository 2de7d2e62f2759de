"""rosbag2 I/O and `revperception replay` over real DDS: bytes, counts and timing survive a replay/record round trip."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, revperception, stop_process
from revperception.bags import BagError, BagWriter, bag_info, read_messages, read_raw, typestore, write_image_bag
from revperception.tools.synthetic import road_frame

START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
FRAMES = 20


def frames() -> list[tuple[int, np.ndarray]]:
    return [(START_NS + i * PERIOD_NS, road_frame(i)[::4, ::4]) for i in range(FRAMES)]


@pytest.fixture
def image_bag(tmp_path: Path) -> Path:
    return write_image_bag(tmp_path / "drive", frames())


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_image_bag_round_trips_through_rosbags(tmp_path: Path, storage: str) -> None:
    image_bag = write_image_bag(tmp_path / "drive", frames(), storage=storage)
    info = bag_info(image_bag)
    assert info.topics["/camera/image_raw"].msgtype == "sensor_msgs/msg/Image"
    assert info.topics["/camera/image_raw"].count == FRAMES
    assert (info.start_ns, info.end_ns) == (START_NS, START_NS + (FRAMES - 1) * PERIOD_NS)
    read = list(read_messages(image_bag))
    assert [t for _, t, _ in read] == [t for t, _ in frames()]
    for (_, t_ns, msg), (_, frame) in zip(read, frames(), strict=True):
        assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == t_ns
        assert (msg.encoding, msg.header.frame_id, msg.height, msg.width) == ("bgr8", "camera", 120, 160)
        assert msg.data.tobytes() == frame.tobytes()


def test_vision_msgs_are_registered(tmp_path: Path) -> None:
    store = typestore()
    det = store.types["vision_msgs/msg/Detection2DArray"](
        header=store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                                  frame_id="camera"), detections=[])
    with BagWriter(tmp_path / "dets", "mcap") as bag:
        bag.add_topic("/detections", "vision_msgs/msg/Detection2DArray")
        bag.write("/detections", 5, bytes(store.serialize_cdr(det, "vision_msgs/msg/Detection2DArray")))
    [(topic, t_ns, msg)] = read_messages(tmp_path / "dets")
    assert (topic, t_ns, msg.header.stamp.nanosec, msg.header.frame_id) == ("/detections", 5, 2, "camera")


def test_writer_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/flag", "std_msgs/msg/Bool")
        raise RuntimeError("failure while writing")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor its temporary folder
    write_image_bag(tmp_path / "bag", frames()[:2])
    with pytest.raises(BagError, match="exists already"):
        write_image_bag(tmp_path / "bag", frames()[:2])
    assert bag_info(tmp_path / "bag").topics["/camera/image_raw"].count == 2


def replay_and_record(bag: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    proc = revperception("replay", str(bag), "--remap", "/camera/image_raw:=/rt/image", "--record", str(out),
                         "--record-topics", "/rt/image", "--record-linger", "0.5", *options)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize(("storage", "rate"), [("sqlite3", 1.0), ("mcap", 2.0)])
def test_replay_record_round_trip_keeps_bytes_and_timing(tmp_path: Path, storage: str, rate: float) -> None:
    image_bag = write_image_bag(tmp_path / "drive", frames(), storage=storage)
    out = tmp_path / "record"
    proc = replay_and_record(image_bag, out, "--rate", str(rate), "--record-storage", storage)
    assert "played 20" in proc.stdout and "recorded 20" in proc.stdout
    info = bag_info(out)
    assert info.storage == storage
    assert info.topics["/rt/image"].msgtype == "sensor_msgs/msg/Image"
    assert info.topics["/rt/image"].count == FRAMES
    assert info.topics["/rt/image"].qos, "offered QoS profiles are stored, as ros2 bag record does"
    recorded = list(read_raw(out))
    assert [data for *_, data in recorded] == [data for *_, data in read_raw(image_bag)]
    # paced, not dumped: the replay cannot end before the bag's span at --rate, and the frames arrive spread over
    # it (only the first frame's delivery delay can shorten the recorded span; how closely the schedule is kept
    # is a measurement, not a test)
    span_s = (FRAMES - 1) * PERIOD_NS / 1e9 / rate
    assert float(re.search(r"; ([0-9.]+) s wall", proc.stdout).group(1)) >= span_s
    assert (recorded[-1][1] - recorded[0][1]) / 1e9 >= span_s / 2


def test_replay_topics_filter_and_start(tmp_path: Path) -> None:
    bag = tmp_path / "two"
    store = typestore()
    with BagWriter(bag) as writer:
        writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/flag", "std_msgs/msg/Bool")
        for (t_ns, _), (_, t, data) in zip(frames(), read_raw(write_image_bag(tmp_path / "img", frames())),
                                           strict=True):
            writer.write("/camera/image_raw", t, data)
            writer.write("/flag", t_ns + 1, bytes(store.serialize_cdr(store.types["std_msgs/msg/Bool"](data=True),
                                                                      "std_msgs/msg/Bool")))
    out = tmp_path / "record"
    proc = replay_and_record(bag, out, "--topics", "/camera/image_raw", "--start", "1.0", "--record-timeout", "1")
    assert "played 10 (/camera/image_raw 10)" in proc.stdout
    expected = [data for _, t, data in read_raw(bag, ["/camera/image_raw"]) if t >= START_NS + 1_000_000_000]
    assert [data for *_, data in read_raw(out)] == expected


def test_record_topic_never_seen_is_a_warning(image_bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "record"
    proc = replay_and_record(image_bag, out, "--record-topics", "/rt/image", "/nobody/publishes", "--record-timeout",
                             "0.5", "--rate", "4")
    assert "/nobody/publishes never appeared" in proc.stderr
    assert set(bag_info(out).topics) == {"/rt/image"}


def test_sigint_closes_the_recording_and_clock_follows_the_bag(image_bag: Path, tmp_path: Path,
                                                                 ros_context: None) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from revperception.ros.spin import spin_until

    node = rclpy.create_node("test_replay_listener")
    images: list[Image] = []
    clocks: list[int] = []
    node.create_subscription(Image, "/loop/image", images.append, 10)
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec),
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    out = tmp_path / "record"
    proc = subprocess.Popen([str(BIN / "revperception"), "replay", str(image_bag), "--loop", "--clock", "--rate", "4",
                             "--remap", "/camera/image_raw:=/loop/image", "--wait-for", "1", "--record", str(out),
                             "--record-topics", "/loop/image"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert spin_until(node, lambda: len(images) > FRAMES + 5 and len(clocks) > 3, timeout_s=60), \
            f"{len(images)} images, {len(clocks)} clocks"
    finally:
        proc.send_signal(signal.SIGINT)
        stop_process(proc)
        node.destroy_node()
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "(interrupted)" in stdout
    assert all(START_NS <= t <= START_NS + (FRAMES - 1) * PERIOD_NS for t in clocks)
    played = int(re.search(r"played (\d+)", stdout).group(1))
    assert played > FRAMES  # looped
    assert bag_info(out).topics["/loop/image"].count == played  # closed complete on SIGINT: every image played


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p / "absent", "does not exist"),
    (lambda p: p, "is not a rosbag2"),
    (lambda p: write_image_bag(p / "bag", frames()[:1]) and next((p / "bag").glob("*.db3")).write_bytes(b"x" * 99)
     and p / "bag", "cannot read bag"),
])
def test_bad_bags_fail_with_one_readable_line(tmp_path: Path, make, reason: str) -> None:
    proc = revperception("replay", str(make(tmp_path)))
    assert proc.returncode == 1
    assert reason in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_unknown_topic_and_existing_record_fail(image_bag: Path, tmp_path: Path) -> None:
    proc = revperception("replay", str(image_bag), "--topics", "/lidar")
    assert proc.returncode == 1 and "has no topic /lidar" in proc.stderr, proc.stderr
    proc = revperception("replay", str(image_bag), "--record", str(image_bag), "--record-topics", "/x")
    assert proc.returncode == 1 and "exists already" in proc.stderr, proc.stderr
