"""rosbag2 files (sqlite3 and mcap) without rosbag2: reading, and atomic writing, through `rosbags`.

The ros2 CLI is not installable here, yet bags must go to and from vehicles that run `ros2 bag play` and
`ros2 bag info`: every bag written here carries type names, message definitions and offered QoS profiles as
rosbag2 writes them. The typestore is ROS 2 Jazzy's plus the packages it lacks (vision_msgs), registered
from the `.msg` files installed under the ament prefixes, so detections deserialise like any other message.
No rclpy here: the ROS layer (`revperception.tools.replay`) publishes and records the raw CDR bytes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType

import numpy as np
from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
EXTRA_PACKAGES = ("vision_msgs",)  # message packages the Jazzy typestore lacks


class BagError(ValueError):
    """A bag that cannot be read or written; the message says which and why."""


def _msg_dirs(package: str) -> Iterator[Path]:
    """`share/<package>/msg` under each ament prefix, then under this interpreter's prefix (the venv)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        folder = Path(prefix) / "share" / package / "msg"
        if folder.is_dir():
            yield folder


def register_package(store: Typestore, package: str) -> bool:
    """Register every `.msg` of an installed `package` in `store`; False when none is installed."""
    folder = next(_msg_dirs(package), None)
    if folder is None:
        return False
    types = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return True


@cache
def typestore() -> Typestore:
    """Jazzy's typestore with EXTRA_PACKAGES registered (one per process: registration parses files)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    for package in EXTRA_PACKAGES:
        register_package(store, package)
    return store


def ensure_type(msgtype: str) -> bool:
    """Whether `msgtype` (pkg/msg/Name) is known, registering its installed package first when it is not."""
    store = typestore()
    if msgtype not in store.fielddefs:
        register_package(store, msgtype.split("/", maxsplit=1)[0])
    return msgtype in store.fielddefs


@dataclass(frozen=True)
class BagTopic:
    """One topic of a bag: what `ros2 bag info` lists."""

    name: str
    msgtype: str
    count: int
    qos: tuple[Qos, ...] = ()
    msgdef: str = ""  # as stored in the bag ("" when the bag has none: the typestore provides it)
    digest: str = ""


@dataclass(frozen=True)
class BagInfo:
    """A bag's topics and time span (timestamps of its first and last messages)."""

    path: Path
    storage: str
    start_ns: int
    end_ns: int
    topics: dict[str, BagTopic]

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class _OpenBag:
    """A rosbags Reader whose failures (missing, corrupt, unknown topic) become one readable BagError."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        try:
            self.reader = Reader(self.path)
        except (ReaderError, FileNotFoundError) as err:
            raise BagError(f"{self.path} is not a rosbag2: {err}") from None

    def __enter__(self) -> Reader:
        try:
            self.reader.open()
        except (ReaderError, FileNotFoundError, KeyError, ValueError) as err:
            raise BagError(f"cannot read bag {self.path}: {err}") from None
        return self.reader

    def __exit__(self, *exc: object) -> None:
        self.reader.close()

    def connections(self, topics: Sequence[str] | None) -> list[Connection]:
        """The reader's connections on `topics` (all when None); an unknown topic is an error."""
        require_topics(self.path, topics or (), {c.topic for c in self.reader.connections})
        return [c for c in self.reader.connections if topics is None or c.topic in topics]


def require_topics(path: Path, topics: Iterable[str], known: Iterable[str]) -> None:
    """An error naming the topics the bag at `path` lacks, and those it has."""
    missing = sorted(set(topics) - set(known))
    if missing:
        raise BagError(f"bag {path} has no topic {', '.join(missing)} (it has {', '.join(sorted(known))})")


def bag_info(path: Path | str) -> BagInfo:
    """Topics, types, counts, QoS and time span of the bag at `path`."""
    bag = _OpenBag(path)
    with bag as reader:
        topics: dict[str, BagTopic] = {}
        for conn in reader.connections:
            count = topics[conn.topic].count if conn.topic in topics else 0
            topics[conn.topic] = BagTopic(conn.topic, conn.msgtype, count + conn.msgcount,
                                          tuple(getattr(conn.ext, "offered_qos_profiles", ())),
                                          conn.msgdef.data if conn.msgdef else "", conn.digest or "")
        storage = "mcap" if bag.path.suffix == ".mcap" or any(bag.path.glob("*.mcap")) else "sqlite3"
        # rosbags' end_time is exclusive: one past the last message
        return BagInfo(bag.path, storage, reader.start_time, max(reader.start_time, reader.end_time - 1), topics)


def read_raw(path: Path | str, topics: Sequence[str] | None = None, start_ns: int | None = None,
             ) -> Iterator[tuple[str, int, bytes]]:
    """`(topic, timestamp_ns, CDR bytes)` in time order, from `start_ns` on: replay publishes these untouched."""
    bag = _OpenBag(path)
    with bag as reader:
        connections = bag.connections(topics)
        try:
            for conn, t_ns, data in reader.messages(connections, start=start_ns):
                yield conn.topic, t_ns, bytes(data)
        except (ReaderError, KeyError, ValueError) as err:
            raise BagError(f"cannot read bag {bag.path}: {err}") from None


def read_messages(path: Path | str, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, object]]:
    """`(topic, timestamp_ns, deserialised rosbags message)` in time order, for analysis of recorded bags."""
    store = typestore()
    types = {name: t.msgtype for name, t in bag_info(path).topics.items()}
    for topic, t_ns, data in read_raw(path, topics):
        if not ensure_type(types[topic]):
            raise BagError(f"message type {types[topic]} of {topic} is not installed")
        yield topic, t_ns, store.deserialize_cdr(data, types[topic])


@dataclass
class BagWriter:
    """A new bag written in a temporary folder beside `path` and renamed into place on a clean close.

    Topics may be added at any time (the recorder adds them as they appear on the graph). An existing
    `path` is never overwritten; a failure inside the `with` block leaves nothing at `path`.
    """

    path: Path
    storage: str = "sqlite3"
    _writer: Writer | None = field(default=None, init=False)
    _tmp: Path | None = field(default=None, init=False)
    _connections: dict[str, Connection] = field(default_factory=dict, init=False)
    counts: dict[str, int] = field(default_factory=dict, init=False)

    def __enter__(self) -> BagWriter:
        self.path = Path(self.path)
        if self.storage not in STORAGES:
            raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        if self.path.exists():
            raise BagError(f"{self.path} exists already, not overwriting")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._writer = Writer(self._tmp / self.path.name, version=Writer.VERSION_LATEST,
                              storage_plugin=STORAGES[self.storage])
        self._writer.open()
        return self

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] = (), msgdef: str = "", digest: str = "",
                  ) -> None:
        """Declare `topic` of `msgtype`; its definition (given, or from the typestore) goes in the bag."""
        assert self._writer is not None, "add_topic outside the with block"
        if msgdef and digest:
            definition = {"msgdef": msgdef, "rihs01": digest}
        elif ensure_type(msgtype):
            definition = {"typestore": typestore()}
        else:
            raise BagError(f"message type {msgtype} of {topic} is not installed: cannot store its definition")
        self._connections[topic] = self._writer.add_connection(topic, msgtype, offered_qos_profiles=list(qos),
                                                               **definition)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Append one CDR-serialised message of a declared topic."""
        assert self._writer is not None, "write outside the with block"
        self._writer.write(self._connections[topic], timestamp_ns, data)
        self.counts[topic] += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._writer is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._writer.close()
                os.rename(self._tmp / self.path.name, self.path)
        except (WriterError, OSError) as err:
            raise BagError(f"cannot write bag {self.path}: {err}") from None
        finally:
            if exc_type is not None:
                self._writer.abort()
            shutil.rmtree(self._tmp, ignore_errors=True)


def write_image_bag(path: Path | str, frames: Iterable[tuple[int, np.ndarray]], topic: str = "/camera/image_raw",
                    frame_id: str = "camera", storage: str = "sqlite3") -> Path:
    """A new bag of bgr8 sensor_msgs/msg/Image on `topic`; `frames` are `(timestamp_ns, BGR array)`.

    The header stamp of each image is its timestamp, so outputs recorded downstream pair with their input.
    """
    store = typestore()
    image_type, header_type, time_type = (store.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                                    "builtin_interfaces/msg/Time"))
    with BagWriter(Path(path), storage) as bag:
        bag.add_topic(topic, "sensor_msgs/msg/Image")
        for t_ns, frame in frames:
            pixels = np.ascontiguousarray(frame, dtype=np.uint8)
            header = header_type(stamp=time_type(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000),
                                 frame_id=frame_id)
            msg = image_type(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding="bgr8",
                             is_bigendian=0, step=pixels.shape[1] * 3, data=pixels.reshape(-1))
            bag.write(topic, t_ns, bytes(store.serialize_cdr(msg, "sensor_msgs/msg/Image")))
    return Path(path)


def copy_with(path: Path | str, out: Path | str, extra: Sequence[tuple[str, int, bytes]], extra_topic: str,
              extra_type: str) -> Path:
    """A new bag at `out`: every message of `path` plus `extra` (topic, timestamp_ns, CDR) on `extra_topic`.

    Messages are merged in time order, so the new bag plays like the old one with the extra messages
    interleaved. The original storage, types and QoS are kept.
    """
    info = bag_info(path)
    if extra_topic in info.topics:
        raise BagError(f"bag {info.path} already has a topic {extra_topic}")
    extra = sorted(extra, key=lambda m: m[1])
    with BagWriter(Path(out), info.storage) as bag:
        for topic in info.topics.values():
            bag.add_topic(topic.name, topic.msgtype, topic.qos, topic.msgdef, topic.digest)
        bag.add_topic(extra_topic, extra_type)
        pending = iter(extra)
        head = next(pending, None)
        for topic, t_ns, data in read_raw(path):
            while head is not None and head[1] <= t_ns:
                bag.write(*head)
                head = next(pending, None)
            bag.write(topic, t_ns, data)
        for message in ([head] if head else []) + list(pending):
            bag.write(*message)
    return Path(out)
