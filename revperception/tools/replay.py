"""`revperception replay`: a rosbag2 played onto live topics with its recorded timing, optionally recording outputs.

Stands in for `ros2 bag play` (and `ros2 bag record` of the outputs) where rosbag2 is not installable. The
recorded CDR bytes are published untouched, so any installed message type replays without deserialising,
with the QoS the bag offered (reliable depth 10 when it stored none). Recording subscribes raw, adapts its
QoS to the publishers it finds (as rosbag2 does) and writes a bag that `ros2 bag info/play` read. One node,
one executor thread for subscriptions and timers; the main thread keeps the schedule and wakes at once on
SIGINT/SIGTERM, after which the recorded bag is closed and renamed into place, complete.
"""

from __future__ import annotations

import importlib
import queue
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from revperception.bags import BagError, BagWriter, bag_info, ensure_type, read_raw, require_topics
from revperception.injection import bag_topic
from revperception.ros.spin import signals_set, spinning, wait_polling

DEFAULT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # ros2 bag play's default too
CLOCK_PERIOD_S = 0.025  # /clock at 40 Hz, as `ros2 bag play --clock`
RECORD_DEPTH = 100  # subscriber history of the recorder: a burst must not be lost while the bag writes
ACK_TIMEOUT_S = 5.0
_INFINITE = QosTime(2147483647, 4294967295)  # how rosbag2 stores an infinite duration


class ReplayError(ValueError):
    """Replay cannot go on (nobody subscribed in time, bad option); the message says what to do."""


@dataclass
class ReplayOptions:
    """What `revperception replay` was asked; see `build_parser` in revperception.cli for each option."""

    bag: Path
    rate: float = 1.0
    start_s: float = 0.0
    loop: bool = False
    topics: Sequence[str] | None = None
    remap: Sequence[str] = ()
    record: Path | None = None
    record_topics: Sequence[str] = ()
    record_storage: str = "sqlite3"
    record_linger_s: float = 2.0
    record_timeout_s: float = 5.0
    wait_for: int = 0
    wait_timeout_s: float = 30.0
    clock: bool = False


@dataclass
class ReplayResult:
    """Counts per topic, the record topics never seen, whether a signal cut it short, and the wall time."""

    played: dict[str, int]
    recorded: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0


def message_class(msgtype: str) -> type:
    """The rclpy message class of `pkg/msg/Name`."""
    package, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise ReplayError(f"message type {msgtype} is not installed (no Python module {package}.msg.{name})") from None


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """`FROM:=TO` pairs as absolute topic names."""
    remaps = {}
    for item in items:
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise ReplayError(f"--remap {item!r}: expected FROM:=TO")
        remaps[bag_topic(source)] = bag_topic(target)
    return remaps


def qos_from_bag(profiles: Sequence[Qos]) -> QoSProfile:
    """The publisher QoS for a topic recorded with `profiles`: best effort or transient local only if all were."""
    if not profiles:
        return DEFAULT_QOS
    best_effort = all(p.reliability == QosReliability.BEST_EFFORT for p in profiles)
    latched = all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)
    keep_all = any(p.history == QosHistory.KEEP_ALL for p in profiles)
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL if keep_all else HistoryPolicy.KEEP_LAST,
        depth=max([p.depth for p in profiles] + [DEFAULT_QOS.depth]),
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def _qos_time(duration: Duration) -> QosTime:
    sec, nsec = divmod(duration.nanoseconds, 1_000_000_000)
    return _INFINITE if sec >= _INFINITE.sec else QosTime(sec, nsec)


def qos_to_bag(profile: QoSProfile) -> Qos:
    """A publisher's QoS as rosbag2 stores it in offered_qos_profiles."""
    liveliness = {LivelinessPolicy.AUTOMATIC: QosLiveliness.AUTOMATIC,
                  LivelinessPolicy.MANUAL_BY_TOPIC: QosLiveliness.MANUAL_BY_TOPIC}
    return Qos(QosHistory.__members__.get(profile.history.name, QosHistory.UNKNOWN), profile.depth,
               QosReliability.__members__.get(profile.reliability.name, QosReliability.UNKNOWN),
               QosDurability.__members__.get(profile.durability.name, QosDurability.UNKNOWN),
               _qos_time(profile.deadline), _qos_time(profile.lifespan),
               liveliness.get(profile.liveliness, QosLiveliness.SYSTEM_DEFAULT),
               _qos_time(profile.liveliness_lease_duration), profile.avoid_ros_namespace_conventions)


class _AbortError(Exception):
    """Unwinds the writer thread's `with BagWriter` so the unfinished bag is discarded."""


class BagThread:
    """A BagWriter owned by a thread of its own, fed through a queue.

    sqlite3 refuses a connection from any thread but its opener's, and the recorder's callbacks run on the
    executor thread while the bag opens and closes on the main one. Leaving the `with` block on an error
    discards the bag (nothing appears at the path); leaving it cleanly closes it and renames it into place.
    """

    def __init__(self, path: Path, storage: str) -> None:
        self.path, self.storage = path, storage
        self.counts: dict[str, int] = {}
        self.error: BagError | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bag-writer")

    def _run(self) -> None:
        try:
            with BagWriter(self.path, self.storage) as bag:
                self.counts = bag.counts
                self._opened.set()
                while (item := self._queue.get()) is not None:
                    if item is _AbortError:
                        raise _AbortError
                    getattr(bag, item[0])(*item[1:])
        except BagError as err:
            self.error = err
        except _AbortError:
            pass
        finally:
            self._opened.set()

    def __enter__(self) -> BagThread:
        self._thread.start()
        self._opened.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error
        return self

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos]) -> None:
        self._queue.put(("add_topic", topic, msgtype, qos))

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        self._queue.put(("write", topic, timestamp_ns, data))

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._queue.put(None if exc_type is None else _AbortError)
        self._thread.join()
        if self.error is not None and exc_type is None:
            raise self.error


class Recorder:
    """Subscribes raw to `topics` as their publishers appear on the graph and writes every message to `bag`.

    Callbacks run on the executor thread only, so the bag is written from one thread. Receive time (the
    node's clock) is the timestamp, as `ros2 bag record` stamps messages.
    """

    def __init__(self, node: Node, topics: Sequence[str], bag: BagThread) -> None:
        self.node, self.bag = node, bag
        self.missing = {node.resolve_topic_name(t) for t in topics}
        self.subscriptions: dict[str, object] = {}
        self.received: dict[str, int] = {}
        self.timer = node.create_timer(0.1, self.discover)

    def discover(self) -> None:
        """Subscribe to each missing topic that now has a publisher."""
        types = dict(self.node.get_topic_names_and_types())
        for topic in sorted(self.missing & set(types)):
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            msgtype = types[topic][0]
            if len(types[topic]) > 1:
                self.node.get_logger().warning(f"{topic} has several types {types[topic]}: recording {msgtype}")
            if not ensure_type(msgtype):
                self.node.get_logger().warning(f"not recording {topic}: its type {msgtype} is not installed")
                self.missing.discard(topic)
                continue
            self.bag.add_topic(topic, msgtype, [qos_to_bag(p.qos_profile) for p in publishers])
            every = [p.qos_profile for p in publishers]
            qos = QoSProfile(
                depth=RECORD_DEPTH,
                reliability=ReliabilityPolicy.RELIABLE
                if all(q.reliability == ReliabilityPolicy.RELIABLE for q in every) else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL
                if all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in every) else DurabilityPolicy.VOLATILE,
            )
            self.subscriptions[topic] = self.node.create_subscription(
                message_class(msgtype), topic, partial(self._on_message, topic), qos, raw=True)
            self.missing.discard(topic)  # last: ready() (main thread) must not see it neither missing nor subscribed

    def _on_message(self, topic: str, data: bytes) -> None:
        self.received[topic] = self.received.get(topic, 0) + 1
        self.bag.write(topic, self.node.get_clock().now().nanoseconds, data)

    def ready(self) -> bool:
        """Every topic subscribed and matched with a publisher: nothing published from now on is missed."""
        return not self.missing and all(s.get_publisher_count() > 0 for s in self.subscriptions.values())


class _Player:
    """The schedule: bag time start_ns plays at wall time t0, later messages `(t - start_ns) / rate` after."""

    def __init__(self, node: Node, opts: ReplayOptions, stop: threading.Event) -> None:
        info = bag_info(opts.bag)
        if opts.rate <= 0:
            raise ReplayError(f"--rate must be > 0, got {opts.rate}")
        if opts.start_s < 0 or info.start_ns + opts.start_s * 1e9 > info.end_ns:
            raise ReplayError(f"--start must be within the bag's {info.duration_s:.2f} s, got {opts.start_s}")
        self.topics = [bag_topic(t) for t in opts.topics] if opts.topics else sorted(info.topics)
        require_topics(info.path, self.topics, info.topics)
        remaps = parse_remaps(opts.remap)
        stray = sorted(set(remaps) - set(self.topics))
        if stray:
            raise ReplayError(f"--remap of {', '.join(stray)}, which is not replayed")
        self.opts, self.node, self.stop = opts, node, stop
        self.start_ns, self.end_ns = info.start_ns + round(opts.start_s * 1e9), info.end_ns
        self.publishers = {t: node.create_publisher(message_class(info.topics[t].msgtype), remaps.get(t, t),
                                                    qos_from_bag(info.topics[t].qos)) for t in self.topics}
        self.played = dict.fromkeys(self.topics, 0)
        self.t0: float | None = None
        if opts.clock:
            clock_type = message_class("rosgraph_msgs/msg/Clock")
            clock = node.create_publisher(clock_type, "/clock", QoSProfile(depth=1))
            node.create_timer(CLOCK_PERIOD_S, lambda: clock.publish(self._clock_msg(clock_type)))

    def _clock_msg(self, clock_type: type) -> object:
        t0 = self.t0
        elapsed = 0.0 if t0 is None else (time.monotonic() - t0) * self.opts.rate
        t_ns = min(self.end_ns, self.start_ns + round(elapsed * 1e9))
        msg = clock_type()
        msg.clock.sec, msg.clock.nanosec = divmod(t_ns, 1_000_000_000)
        return msg

    def subscribers_ready(self, own: set[str]) -> bool:
        """Every replayed topic has `wait_for` subscribers besides this node's own recorder."""
        return all(p.get_subscription_count() - (p.topic_name in own) >= self.opts.wait_for
                   for p in self.publishers.values())

    def play(self) -> None:
        """Publish on schedule until the bag ends (every pass with --loop) or a signal arrives."""
        while not self.stop.is_set():
            self.t0 = time.monotonic()
            for topic, t_ns, data in read_raw(self.opts.bag, self.topics, self.start_ns):
                due = self.t0 + (t_ns - self.start_ns) / 1e9 / self.opts.rate
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    return
                self.publishers[topic].publish(data)
                self.played[topic] += 1
            if not self.opts.loop:
                return

    def flush(self) -> None:
        """Give reliable subscribers the last messages before the publishers go."""
        for publisher in self.publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))


def replay(opts: ReplayOptions) -> ReplayResult:
    """Play `opts.bag` (and record `opts.record_topics` into `opts.record`); see the module docstring."""
    began = time.monotonic()
    stop = threading.Event()
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)  # argv is ours, not ROS args
    with ExitStack() as stack:  # unwinds in reverse: executor stopped, then the bag closed, then the node
        stack.callback(rclpy.try_shutdown)
        stack.enter_context(signals_set(stop))
        node = Node("revperception_replay")
        stack.callback(node.destroy_node)
        player = _Player(node, opts, stop)
        bag = recorder = None
        if opts.record is not None:
            bag = stack.enter_context(BagThread(Path(opts.record), opts.record_storage))
            recorder = Recorder(node, opts.record_topics, bag)
        stack.enter_context(spinning(node))
        own = (lambda: set(recorder.subscriptions)) if recorder is not None else set
        ready = wait_polling(lambda: player.subscribers_ready(own()), stop, opts.wait_timeout_s)
        if not ready and not stop.is_set():
            counts = ", ".join(f"{p.topic_name} {p.get_subscription_count()}" for p in player.publishers.values())
            raise ReplayError(f"fewer than {opts.wait_for} subscribers after {opts.wait_timeout_s:g} s ({counts})")
        if recorder is not None:  # matched both ways: our publishers must see our own record subscriptions too
            wait_polling(lambda: recorder.ready() and player.subscribers_ready(own()), stop, opts.record_timeout_s)
        player.play()
        player.flush()
        if recorder is not None:
            # What we played ourselves, the recorder takes before the executor stops, signal or not: acked is
            # only delivered, and under load its callbacks can trail the publisher by many messages.
            played = {p.topic_name: player.played[t] for t, p in player.publishers.items()
                      if p.topic_name in recorder.subscriptions}
            wait_polling(lambda: all(recorder.received.get(n, 0) >= k for n, k in played.items()),
                         threading.Event(), opts.record_timeout_s)
            stop.wait(opts.record_linger_s)
    return ReplayResult(player.played, dict(bag.counts) if bag else {}, sorted(recorder.missing) if recorder else [],
                        stop.is_set(), time.monotonic() - began)


def format_summary(result: ReplayResult) -> str:
    """One line: messages played and recorded per topic, topics never seen, wall time."""
    def counts(per_topic: dict[str, int]) -> str:
        return ", ".join(f"{t} {n}" for t, n in per_topic.items()) or "none"

    parts = [f"played {sum(result.played.values())} ({counts(result.played)})"]
    if result.recorded or result.absent:
        parts.append(f"recorded {sum(result.recorded.values())} ({counts(result.recorded)})")
    if result.absent:
        parts.append(f"never seen: {', '.join(result.absent)}")
    parts.append(f"{result.wall_s:.2f} s wall{' (interrupted)' if result.interrupted else ''}")
    return "replay: " + "; ".join(parts)


def warn_absent(result: ReplayResult) -> None:
    """Record topics that never appeared: the bag lacks them, which is worth a line on stderr, not a failure."""
    for topic in result.absent:
        print(f"revperception replay: warning: {topic} never appeared on the graph: not in the recording",
              file=sys.stderr)
