"""The embedded demo (`make demo`): a synthetic foggy drive replayed through the anomaly monitor and the node.

Everything is real and started the way `ros2 launch` would start it: `perception_node` and `anomaly_monitor`
run as their own processes from their console scripts with the package's params files, and
`revperception replay` plays the drive bag onto `/camera/image_raw` (waiting for both subscribers) while
recording the outputs into a second bag. The summary, `timeline.png` and `strip.png` are computed from that
recorded bag alone, as a test engineer would from a vehicle's bag. Exits non-zero when any part of the chain
fails, or when the node did not go to full during the fog and back to pruned after it.

`revperception demo --video FILE` runs the same chain on a user's footage: `run_video_demo` decodes it with
OpenCV, optionally fogs a time window with the synthetic drive's `add_fog`, and hands the frames to the one
bag-writing and replay path (`run_chain`) that the synthetic drive goes through too.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from revperception.bags import read_messages, write_image_bag
from revperception.models.annotate import annotate
from revperception.models.detector import Detections
from revperception.pruning import FULL, PRUNED
from revperception.ros import qos
from revperception.share import share_path
from revperception.tools.synthetic import CLASSES, add_fog, drive

# Each process runs its module's main() under this interpreter, as its console script would: the same code in a
# virtualenv, where the scripts sit beside the interpreter, and in a colcon install space, where they do not.
NODES = {"perception_node": "revperception.ros.perception_node", "anomaly_monitor": "revperception.ros.anomaly_monitor",
         "revperception": "revperception.cli"}


def committed_checkpoint() -> Path:
    """The committed demo checkpoint, where the package is installed (share/revperception/models)."""
    return share_path("models", "demo-yolov5n.rvp.safetensors")


def command(name: str) -> list[str]:
    """How to start console script `name` (see NODES)."""
    return [sys.executable, "-m", NODES[name]]

IMAGE_TOPIC = "/camera/image_raw"
NAMESPACE = "/demo"
RECORD_TOPICS = {  # what the summary reads, by role
    "detections": f"{NAMESPACE}/detections", "frame_info": f"{NAMESPACE}/revperception/frame_info",
    "mode": f"{NAMESPACE}/revperception/mode", "anomaly": f"{NAMESPACE}/anomaly",
}
NS = 1_000_000_000
DRIVE_START_NS = 1_767_225_600 * NS  # the drive's first stamp (2026-01-01 UTC): a fixed, plausible bag clock
VIDEO_MAX_WIDTH = 640  # wider frames are downscaled: raw bgr8 over DDS stays near the synthetic 640x480 (0.9 MB)
VIDEO_SECONDS = 30.0  # default cap on a video's length used: the bag holds raw frames (17 MB/s at 640x360, 25 fps)
VIDEO_FOG_DENSITY = 0.7  # --fog's density, as the synthetic drive's: contrast falls well below the monitor's 0.2


@dataclass
class Frame:
    """One frame of the drive as the recorded bag tells it."""

    stamp_ns: int  # the image's header stamp (= its bag time)
    fogged: bool
    level: str = ""  # empty: the node never processed it (dropped)
    latency_ms: float = float("nan")
    boxes: list[tuple[float, float, float, float, float, str]] = field(default_factory=list)  # xyxy, score, class

    @property
    def t(self) -> float:
        """Drive time, s."""
        return (self.stamp_ns - DRIVE_START_NS) / NS

    @property
    def classes(self) -> list[str]:
        return [b[5] for b in self.boxes]

    def detections(self) -> Detections:
        """The recorded boxes as Detections, for drawing."""
        ids = {name: i for i, name in enumerate(CLASSES)}
        ids.update({b[5]: len(ids) + i for i, b in enumerate(self.boxes) if b[5] not in ids})
        return Detections(np.array([b[:4] for b in self.boxes], np.float32).reshape(-1, 4),
                          np.array([b[4] for b in self.boxes], np.float32),
                          np.array([ids[b[5]] for b in self.boxes], np.int64), {i: n for n, i in ids.items()})


@dataclass
class DemoResult:
    frames: list[Frame]
    anomaly: list[tuple[float, bool]]  # (drive time, flag) as the monitor published it
    modes: list[tuple[float, str]]  # (drive time, level) as ~/mode announced it
    dropped: int = 0  # as the node last reported
    anomaly_to_full_ms: float | None = None  # first anomaly: true -> ~/mode full, both as recorded
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def node_commands(checkpoint: Path, clear_hold_s: float) -> dict[str, list[str]]:
    """Both nodes' command lines, as `ros2 run` (or the launch file) would start them."""
    config = share_path("config")
    # Reliable images, as a bag replay deserves: every frame reaches the node (run_demo also sets the shared-memory
    # transport for whole frames; without it a best-effort reader got 7 of 100 replayed 640x480 frames).
    common = ["-p", "image_qos:=reliable", "-r", f"image:={IMAGE_TOPIC}", "-r", f"__ns:={NAMESPACE}"]
    return {
        "perception_node": [*command("perception_node"), "--ros-args", "--params-file",
                            str(config / "perception.yaml"), "-p", f"checkpoint:={checkpoint}",
                            "-p", f"anomaly_clear_hold_s:={clear_hold_s}", *common],
        "anomaly_monitor": [*command("anomaly_monitor"), "--ros-args", "--params-file",
                            str(config / "anomaly_monitor.yaml"), *common],
    }


def write_frames(path: Path, frames: Iterable[tuple[int, np.ndarray, bool]]) -> list[Frame]:
    """Frames `(ns from the start, BGR image, fogged)` as a rosbag2 of sensor_msgs/Image on IMAGE_TOPIC, stamped
    from DRIVE_START_NS; returns their times and fog. Streams: a long video never sits in memory whole."""
    written: list[Frame] = []

    def images() -> Iterator[tuple[int, np.ndarray]]:
        for t_ns, image, fogged in frames:
            written.append(Frame(DRIVE_START_NS + t_ns, fogged))
            yield DRIVE_START_NS + t_ns, image

    if path.exists():
        shutil.rmtree(path)
    write_image_bag(path, images(), topic=IMAGE_TOPIC)
    return written


def demo_checkpoint(checkpoint: Path | None) -> Path:
    """The given checkpoint or the committed demo one; a missing file fails before anything is written."""
    checkpoint = Path(checkpoint or committed_checkpoint())
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} does not exist: `make demo-model` regenerates the demo checkpoint")
    return checkpoint


def run_demo(checkpoint: Path | None = None, *, seconds: float = 30.0, hz: float = 10.0, out: Path = Path("demo-out"),
             clear_hold_s: float = 1.0, startup_timeout_s: float = 180.0) -> DemoResult:
    """Write the synthetic drive, run the chain over DDS, read back the recorded outputs; see the module docstring."""
    checkpoint = demo_checkpoint(checkpoint)
    print(f"demo: writing a {seconds:.0f} s synthetic drive at {hz:.0f} Hz with fog in the middle ...", flush=True)
    frames = ((t_ns, image, fogged) for t_ns, image, _, fogged in drive(seconds=seconds, hz=hz))
    return run_chain(checkpoint, frames, out, seconds=seconds, clear_hold_s=clear_hold_s,
                     startup_timeout_s=startup_timeout_s)


def run_chain(checkpoint: Path, frames: Iterable[tuple[int, np.ndarray, bool]], out: Path, *, seconds: float,
              clear_hold_s: float = 1.0, startup_timeout_s: float = 180.0) -> DemoResult:
    """The path both the synthetic drive and a video take: bag them into `out/drive`, start both nodes, replay the
    bag over DDS while recording their outputs into `out/record`, stop the nodes, summarise the recording."""
    out.mkdir(parents=True, exist_ok=True)
    qos.use_large_frame_transport()  # for the nodes and the replay started below
    written = write_frames(out / "drive", frames)
    record = out / "record"
    if record.exists():
        shutil.rmtree(record)
    nodes = {name: subprocess.Popen(cmd) for name, cmd in node_commands(checkpoint, clear_hold_s).items()}
    failures: list[str] = []
    try:
        print(f"demo: replaying {len(written)} frames through anomaly_monitor and perception_node ({checkpoint.name})")
        limit_s = startup_timeout_s + seconds * 3 + 60
        replay = subprocess.run(
            [*command("revperception"), "replay", str(out / "drive"), "--wait-for", "2", "--wait-timeout",
             str(startup_timeout_s), "--record", str(record), "--record-topics", *RECORD_TOPICS.values()],
            timeout=limit_s, check=False)
        if replay.returncode != 0:
            failures.append(f"revperception replay exited {replay.returncode}")
    except subprocess.TimeoutExpired:
        failures.append(f"revperception replay did not finish within {limit_s:.0f} s")
    finally:
        for name, proc in nodes.items():
            failures += _stop(name, proc)
    if not record.exists():
        return DemoResult(written, [], [], failures=[*failures, "no outputs were recorded"])
    result = summarise(record, written)
    result.failures[:0] = failures
    return result


def parse_fog(text: str) -> tuple[float, float]:
    """`--fog START:END`, seconds into the video."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        start = end = float("nan")
    if not 0 <= start < end < float("inf"):
        raise ValueError(f"--fog takes START:END in seconds into the video with 0 <= START < END, got {text!r}")
    return start, end


@dataclass(frozen=True)
class Video:
    """A video file that opened and whose first frame decoded, with what its container says."""

    path: Path
    fps: float
    width: int
    height: int
    frame_count: int  # 0 when the container does not say

    @property
    def duration_s(self) -> float | None:
        return self.frame_count / self.fps if self.frame_count > 0 else None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) the frames are replayed at: at most VIDEO_MAX_WIDTH wide, aspect kept."""
        if self.width <= VIDEO_MAX_WIDTH:
            return self.width, self.height
        return VIDEO_MAX_WIDTH, max(1, round(self.height * VIDEO_MAX_WIDTH / self.width))


def open_video(path: Path) -> Video:
    """Check a video before anything is written: it exists, OpenCV decodes its first frame, it has a frame rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    # FFmpeg's own complaint about a file it cannot read ("moov atom not found") would be a second, cryptic line
    # beside the error below; OpenCV reads this when it first starts FFmpeg. A user's own setting wins.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cap = cv2.VideoCapture(str(path))
    try:
        ok, image = cap.read() if cap.isOpened() else (False, None)
        if not ok or image is None:
            raise ValueError(f"{path}: OpenCV cannot decode it as a video")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not fps > 0:
            raise ValueError(f"{path}: the video has no frame rate to replay it at")
        return Video(path, fps, image.shape[1], image.shape[0], max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))))
    finally:
        cap.release()


def video_frames(video: Video, seconds: float, fog: tuple[float, float] | None,
                 ) -> Iterator[tuple[int, np.ndarray, bool]]:
    """The video's first `seconds` as `(ns from its first frame, BGR image, fogged)`, downscaled to `video.size`.

    Stamps are the decoder's presentation times, so the replay keeps the video's own timing (variable frame
    rates included); where a container gives none that advance, a frame follows the last one by 1 / fps.
    """
    cap = cv2.VideoCapture(str(video.path))
    first_ms: float | None = None
    last_ns = -NS
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            pts_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            first_ms = pts_ms if first_ms is None else first_ms
            t_ns = round((pts_ms - first_ms) * 1e6)
            if t_ns <= last_ns:
                t_ns = last_ns + round(NS / video.fps)
            if t_ns >= seconds * NS:
                return
            last_ns = t_ns
            if (image.shape[1], image.shape[0]) != video.size:
                image = cv2.resize(image, video.size, interpolation=cv2.INTER_AREA)
            fogged = fog is not None and fog[0] * NS <= t_ns < fog[1] * NS
            yield t_ns, (add_fog(image, VIDEO_FOG_DENSITY) if fogged else image), fogged
    finally:
        cap.release()


def run_video_demo(video: Path, checkpoint: Path | None = None, *, fog: tuple[float, float] | None = None,
                   seconds: float | None = None, out: Path = Path("demo-out"), clear_hold_s: float = 1.0,
                   startup_timeout_s: float = 180.0) -> DemoResult:
    """The demo's chain on a user's video, at its own frame rate; every input is checked before anything is written.

    `seconds` caps the length used (default VIDEO_SECONDS); `fog` fogs that window of it with the synthetic
    drive's `add_fog`, so the reversion can be seen; without it the monitor decides from the footage alone.
    """
    source = open_video(video)
    checkpoint_given = checkpoint is not None
    checkpoint = demo_checkpoint(checkpoint)
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    used_s = min(seconds or VIDEO_SECONDS, source.duration_s or float("inf"))
    if fog is not None and fog[0] >= used_s:
        raise ValueError(f"--fog {fog[0]:g}:{fog[1]:g} starts after the {used_s:.1f} s used of {source.path}")
    width, height = source.size
    length = f"{source.duration_s:.1f} s" if source.duration_s else "length unknown"
    scaled = f", downscaled to {width}x{height}" if (width, height) != (source.width, source.height) else ""
    print(f"demo: video {source.path} ({source.width}x{source.height}, {source.fps:g} fps, {length}): replaying "
          f"{'up to ' if source.duration_s is None else ''}{used_s:.1f} s at its own frame rate{scaled}", flush=True)
    if fog is None:
        print("demo: no fog added (--fog START:END adds it): the anomaly monitor decides from the footage alone")
    else:
        print(f"demo: synthetic fog (density {VIDEO_FOG_DENSITY}) from {fog[0]:g} s to {min(fog[1], used_s):g} s")
    if not checkpoint_given:
        print(f"demo: {checkpoint.name} only knows the synthetic classes ({', '.join(CLASSES)}, drawn as simple "
              "shapes); real footage needs a checkpoint made from your model, e.g. `revperception prune --weights "
              "yolov5n.pt --no-finetune --out my.rvp.safetensors`, then --checkpoint my.rvp.safetensors")
    return run_chain(checkpoint, video_frames(source, used_s, fog), out, seconds=used_s, clear_hold_s=clear_hold_s,
                     startup_timeout_s=startup_timeout_s)


def _stop(name: str, proc: subprocess.Popen) -> list[str]:
    """SIGINT, as `ros2 launch` stops its nodes; a crash or a hang is a failure of the chain."""
    if proc.poll() is not None:
        return [f"{name} exited early with code {proc.returncode}"]
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return [f"{name} did not exit within 60 s of SIGINT"]
    return [] if code == 0 else [f"{name} exited with code {code}"]


def summarise(record: Path, frames: list[Frame]) -> DemoResult:
    """Per-frame levels, latencies and detections, the anomaly flag and the mode history, from the recorded bag."""
    by_stamp = {f.stamp_ns: f for f in frames}
    anomaly_wall: list[tuple[int, bool]] = []
    mode_wall: list[tuple[int, str]] = []
    offsets: list[int] = []  # record time - drive time of each processed frame: the smallest is the replay's start
    dropped = 0
    for topic, t_ns, msg in read_messages(record, list(RECORD_TOPICS.values())):
        if topic == RECORD_TOPICS["frame_info"]:
            frame = by_stamp.get(_stamp_ns(msg.header.stamp))
            if frame is not None:
                values = {kv.key: kv.value for kv in msg.status[0].values}
                frame.level, frame.latency_ms = values["level"], float(values["latency_ms"])
                dropped = int(values["dropped_frames"])
                offsets.append(t_ns - frame.stamp_ns + DRIVE_START_NS)
        elif topic == RECORD_TOPICS["detections"]:
            frame = by_stamp.get(_stamp_ns(msg.header.stamp))
            if frame is not None:
                frame.boxes = [_box(d) for d in msg.detections if d.results]
        elif topic == RECORD_TOPICS["anomaly"]:
            anomaly_wall.append((t_ns, msg.data))
        elif topic == RECORD_TOPICS["mode"]:
            mode_wall.append((t_ns, msg.data))
    start = min(offsets, default=0)
    result = DemoResult(frames, [((t - start) / NS, v) for t, v in anomaly_wall],
                        [((t - start) / NS, v) for t, v in mode_wall], dropped=dropped)
    first_alarm = next((t for t, v in anomaly_wall if v), None)
    first_full = next((t for t, v in mode_wall if v == FULL and first_alarm is not None and t >= first_alarm), None)
    if first_full is not None:
        result.anomaly_to_full_ms = (first_full - first_alarm) / 1e6
    result.failures = _check(result)
    return result


def _stamp_ns(stamp) -> int:
    return stamp.sec * NS + stamp.nanosec


def _box(det) -> tuple[float, float, float, float, float, str]:
    """A recorded vision_msgs Detection2D as (x1, y1, x2, y2, score, class name)."""
    cx, cy, w, h = det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y
    best = det.results[0].hypothesis
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, best.score, best.class_id


def _check(result: DemoResult) -> list[str]:
    """What `make demo` promises: frames answered, full during the fog, pruned again after it."""
    processed = [f for f in result.frames if f.level]
    if not processed:
        return ["the perception node answered no frames"]
    failures = []
    fog = [f for f in result.frames if f.fogged]
    if fog and not any(f.level == FULL for f in processed if f.t >= fog[0].t):
        failures.append("the node never ran the full level during or after the fog")
    if fog and (not result.anomaly or not any(v for _, v in result.anomaly)):  # without fog: the footage decides
        failures.append("the anomaly monitor never flagged the fog")
    if fog and processed[-1].level != PRUNED:
        failures.append(f"the node did not return to {PRUNED} after the fog (last frame ran {processed[-1].level})")
    return failures


def print_summary(result: DemoResult) -> None:
    frames, processed = result.frames, [f for f in result.frames if f.level]
    fog = [f.t for f in frames if f.fogged]
    print(f"demo: {len(frames)} frames replayed, {len(processed)} processed, {len(frames) - len(processed)} "
          f"not processed ({result.dropped} dropped for newer frames by the node)")
    if fog:
        print(f"demo: fog from {fog[0]:.1f} s to {fog[-1]:.1f} s of the drive")
    else:
        print("demo: no fog was added: any anomaly was the monitor's reading of the footage itself")
    for level in dict.fromkeys(f.level for f in processed):
        latencies = sorted(f.latency_ms for f in processed if f.level == level)
        print(f"demo: {level:<7} {len(latencies):>4} frames, inference median {statistics.median(latencies):6.1f} ms, "
              f"p90 {latencies[int(0.9 * (len(latencies) - 1))]:6.1f} ms")
    changes = [f"{level} at {t:.1f} s" for t, level in result.modes]
    print(f"demo: ~/mode {' -> '.join(changes) or 'never recorded'} ({max(len(changes) - 1, 0)} switches)")
    flags = [f"{'true' if v else 'false'} at {t:.1f} s" for i, (t, v) in enumerate(result.anomaly)
             if i == 0 or v != result.anomaly[i - 1][1]]
    print(f"demo: anomaly {' -> '.join(flags) or 'never recorded'} ({len(result.anomaly)} heartbeats)")
    if result.anomaly_to_full_ms is not None:
        print(f"demo: anomaly true -> ~/mode full, as recorded: {result.anomaly_to_full_ms:.1f} ms")
    counts = Counter(c for f in processed for c in f.classes)
    # The demo model's classes, zeros included; a user's model (other names): what it found, most frequent first.
    names = CLASSES if counts and set(counts) <= set(CLASSES) else [c for c, _ in counts.most_common()]
    print("demo: detections per class: " + (", ".join(f"{c} {counts.get(c, 0)}" for c in names) or "none"))
    for failure in result.failures:
        print(f"demo: FAILED: {failure}", file=sys.stderr)


def plot_timeline(result: DemoResult, path: Path) -> None:
    """Anomaly flag, active level, per-frame latency and detection count against drive time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    processed = [f for f in result.frames if f.level]
    levels = list(dict.fromkeys([PRUNED, *(f.level for f in processed), FULL]))
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    series = [
        ("anomaly", [t for t, _ in result.anomaly], [int(v) for _, v in result.anomaly], "steps-post"),
        ("level", [f.t for f in processed], [levels.index(f.level) for f in processed], "steps-post"),
        ("inference ms", [f.t for f in processed], [f.latency_ms for f in processed], "default"),
        ("detections", [f.t for f in processed], [len(f.classes) for f in processed], "default"),
    ]
    fog = [f.t for f in result.frames if f.fogged]
    for ax, (label, xs, ys, style) in zip(axes, series, strict=True):
        ax.plot(xs, ys, drawstyle=style, marker="." if style == "default" else None)
        ax.set_ylabel(label)
        if fog:
            ax.axvspan(fog[0], fog[-1], color="grey", alpha=0.2, label="fog")
    axes[0].set_yticks([0, 1], ["false", "true"])
    axes[1].set_yticks(range(len(levels)), levels)
    axes[0].legend(loc="upper right")
    axes[-1].set_xlabel("drive time (s)")
    fig.suptitle("revperception demo: the node reverts to full while the monitor flags fog")
    fig.tight_layout()
    _save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def image_strip(result: DemoResult, drive_bag: Path, path: Path) -> None:
    """Annotated frames from before, during and after the fog (without fog: from the start, middle and end of a
    video), side by side, from the recorded detections."""
    processed = [f for f in result.frames if f.level]
    fog = [f for f in processed if f.fogged]
    if fog:
        chosen = (min(processed, key=lambda f: abs(f.t - fog[0].t / 2)), fog[len(fog) // 2],
                  min(processed, key=lambda f: abs(f.t - (fog[-1].t + processed[-1].t) / 2)))
    else:
        chosen = tuple(processed[len(processed) * k // 6] for k in (1, 3, 5))
    picks = {f.stamp_ns: f for f in chosen}
    tiles = []
    for *_, msg in read_messages(drive_bag):
        frame = picks.get(_stamp_ns(msg.header.stamp))
        if frame is not None:
            image = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            banner = f"t={frame.t:.1f}s {frame.level} {frame.latency_ms:.0f} ms{' FOG' if frame.fogged else ''}"
            tiles.append(cv2.resize(annotate(image, frame.detections(), banner=banner), None, fx=0.5, fy=0.5))
    _save_atomic(path, lambda tmp: _imwrite(tmp, np.hstack(tiles)))


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def _save_atomic(path: Path, write) -> None:
    """Write through a temporary file beside `path`, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def report(result: DemoResult, out: Path) -> None:
    """The printed summary, `timeline.png` and `strip.png` (the latter two when the node processed frames)."""
    print_summary(result)
    if any(f.level for f in result.frames):
        plot_timeline(result, out / "timeline.png")
        image_strip(result, out / "drive", out / "strip.png")
        print(f"demo: wrote {out / 'timeline.png'} and {out / 'strip.png'}; recorded outputs in {out / 'record'}")
