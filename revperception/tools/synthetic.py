"""Deterministic synthetic road scenes drawn with OpenCV: no data files, no downloads.

`road_frame` is the minimal moving frame the node demo and benches publish. `road_scene`, `drive` and
`write_dataset` draw labelled scenes (cars, pedestrians, traffic signs) through one pinhole camera over a
flat road, so a detector trained on `write_dataset` scenes sees the same world as the `drive` it runs on.
Every random choice comes from a numpy Generator the caller seeds: the same seed gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np


def road_frame(index: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Frame `index` of a drive along a straight road: sky, asphalt, moving lane marks, a car ahead."""
    frame = np.empty((height, width, 3), np.uint8)
    horizon = height * 2 // 5
    frame[:horizon] = (235, 206, 135)  # sky (BGR)
    frame[horizon:] = (60, 120, 60)  # verge
    road = np.array([[width * 0.45, horizon], [width * 0.55, horizon], [width, height], [0, height]], np.int32)
    cv2.fillPoly(frame, [road], (70, 70, 70))
    for k in range(8):  # lane marks slide towards the camera as the car drives
        t = ((k + index * 0.25) % 8) / 8.0
        y0, y1 = horizon + (height - horizon) * t**2, horizon + (height - horizon) * min(1.0, (t + 0.06) ** 2)
        cv2.line(frame, (width // 2, int(y0)), (width // 2, int(y1)), (255, 255, 255), max(1, int(8 * t)))
    cx, size = width // 2 + int(40 * np.sin(index / 7.0)), 60 + (index % 20)
    top = horizon + 40
    cv2.rectangle(frame, (cx - size, top), (cx + size, top + size), (40, 40, 200), -1)  # a red car
    cv2.rectangle(frame, (cx - size + 10, top + 8), (cx + size - 10, top + size // 2), (90, 60, 40), -1)
    return frame


FOG_GREY = 200  # the colour fog fades towards (BGR grey)


def add_fog(frame: np.ndarray, density: float) -> np.ndarray:
    """`frame` seen through fog: blended towards light grey, so contrast falls as `density` (0..1) rises."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"fog density must be within [0, 1], got {density}")
    return cv2.addWeighted(frame, 1.0 - density, np.full_like(frame, FOG_GREY), density, 0.0)


# -- labelled scenes ---------------------------------------------------------------------------------------

CLASSES = ("car", "pedestrian", "traffic_sign")
CAR, PEDESTRIAN, SIGN = range(len(CLASSES))
TREE = -1  # drawn as clutter, never labelled

# The world, in metres: x to the right of the camera, z ahead of it; the ground is flat.
CAMERA_HEIGHT = 1.5
HORIZON = 0.42  # fraction of the image height
FOCAL = 0.8  # focal length as a fraction of the image width
Z_NEAR, Z_FAR = 3.0, 30.0  # objects exist between these distances (beyond Z_FAR they would be specks)
LANE = 3.5  # ego lane centred on x = 0, oncoming lane at -LANE
ROAD = (-5.25, 4.25)  # kerbs; x 1.75..4.25 is a parking lane
SIDEWALK = 2.25  # width of the pavement beyond each kerb
MIN_BOX_PX = 6  # smallest labelled box side at 640 px width
MIN_VISIBLE = 0.35  # smallest labelled fraction of an object's drawn pixels left unoccluded


@dataclass
class _Thing:
    """One object in the world; `rel_speed` is how fast it approaches (negative) or recedes, in m/s."""

    kind: int
    x: float
    z: float
    rel_speed: float
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    variant: int = 0  # car: rear or front; sign: circle, triangle or blue square
    gap_phase: float | None = None  # set on the car ahead in the ego lane, which keeps a varying gap


@dataclass
class _Look:
    """The lighting and surface colours of one scene."""

    sky: tuple[int, int, int]
    road: int
    verge: tuple[int, int, int]
    pavement: int
    gain: float
    travelled: float  # metres driven: where the lane dashes are

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Look:
        return cls(sky=_jitter(rng, (235, 206, 150), 25), road=int(rng.integers(55, 105)),
                   verge=_jitter(rng, (60, 125, 70), 25), pavement=int(rng.integers(120, 170)),
                   gain=float(rng.uniform(0.65, 1.2)), travelled=float(rng.uniform(0, 100)))


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in colour)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(20, 236, 3))


# Spawned roles: (rate per second in a drive, mean count in a random scene).
_ROLES = {"oncoming": (0.35, 1.0), "parked": (0.25, 1.0), "pedestrian": (0.7, 2.0), "sign": (0.3, 1.0),
          "tree": (0.4, 2.0)}
EGO_SPEED = 10.0  # m/s


def _make(role: str, rng: np.random.Generator, z: float) -> _Thing:
    """A new object of `role` at distance `z`, with its own colours and motion."""
    if role == "oncoming":
        return _Thing(CAR, -LANE + rng.uniform(-0.4, 0.4), z, -EGO_SPEED - rng.uniform(6, 12), _colour(rng),
                      _jitter(rng, (70, 50, 40), 20), variant=1)
    if role == "parked":
        return _Thing(CAR, 3.0 + rng.uniform(-0.2, 0.2), z, -EGO_SPEED, _colour(rng), _jitter(rng, (70, 50, 40), 20))
    if role == "lead":
        return _Thing(CAR, rng.uniform(-0.3, 0.3), z, 0.0, _colour(rng), _jitter(rng, (70, 50, 40), 20),
                      gap_phase=float(rng.uniform(0, 2 * math.pi)))
    if role == "pedestrian":
        offset = rng.uniform(0.4, SIDEWALK - 0.4)
        side = ROAD[1] + offset if rng.random() < 0.5 else ROAD[0] - offset
        return _Thing(PEDESTRIAN, side, z, -EGO_SPEED + rng.uniform(-1.5, 1.5), _colour(rng), _colour(rng))
    if role == "sign":
        side = ROAD[1] + SIDEWALK + 0.3 if rng.random() < 0.7 else ROAD[0] - SIDEWALK - 0.3
        return _Thing(SIGN, side, z, -EGO_SPEED, (255, 255, 255), (30, 30, 210), variant=int(rng.integers(0, 3)))
    offset = rng.uniform(SIDEWALK + 1.5, 10)
    side = ROAD[1] + offset if rng.random() < 0.5 else ROAD[0] - offset
    return _Thing(TREE, side, z, -EGO_SPEED, _jitter(rng, (40, 110, 50), 30), _jitter(rng, (40, 60, 90), 15))


def _populate(rng: np.random.Generator) -> list[_Thing]:
    """A random snapshot of the road: each role's objects spread uniformly over the visible distances."""
    things = [_make(role, rng, rng.uniform(Z_NEAR + 2, Z_FAR)) for role, (_, mean) in _ROLES.items()
              for _ in range(rng.poisson(mean))]
    if rng.random() < 0.7:
        things.append(_make("lead", rng, rng.uniform(8, Z_FAR)))
    return things


class _Canvas:
    """The frame, a mask of the object being drawn, and which object owns each pixel (for occlusion)."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self.mask = np.zeros(frame.shape[:2], np.uint8)
        self.owner = np.full(frame.shape[:2], -1, np.int16)

    def poly(self, points: list[tuple[float, float]], colour: tuple[int, int, int], *, label: bool = True) -> None:
        pts = np.round(np.array(points) * 16).astype(np.int32)  # 4 fractional bits: sub-pixel edges
        cv2.fillConvexPoly(self.frame, pts, colour, cv2.LINE_AA, 4)
        if label:
            cv2.fillConvexPoly(self.mask, pts, 255, cv2.LINE_8, 4)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int], *,
             label: bool = True) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, label=label)

    def circle(self, cx: float, cy: float, r: float, colour: tuple[int, int, int], *, label: bool = True) -> None:
        centre, radius = (round(cx * 16), round(cy * 16)), max(16, round(r * 16))
        cv2.circle(self.frame, centre, radius, colour, -1, cv2.LINE_AA, 4)
        if label:
            cv2.circle(self.mask, centre, radius, 255, -1, cv2.LINE_8, 4)


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, int(c * factor)) for c in colour)


def _draw_car(c: _Canvas, t: _Thing, box: tuple[float, float, float, float]) -> None:
    x0, top, x1, bottom = box
    w, h = x1 - x0, bottom - top
    c.poly([(x0 + 0.14 * w, top), (x1 - 0.14 * w, top), (x1 - 0.03 * w, top + 0.42 * h),
            (x0 + 0.03 * w, top + 0.42 * h)], t.colour)  # cabin
    c.poly([(x0 + 0.2 * w, top + 0.07 * h), (x1 - 0.2 * w, top + 0.07 * h), (x1 - 0.1 * w, top + 0.38 * h),
            (x0 + 0.1 * w, top + 0.38 * h)], t.accent)  # window
    c.rect(x0 + 0.06 * w, bottom - 0.22 * h, x0 + 0.26 * w, bottom, (25, 25, 25))  # wheels
    c.rect(x1 - 0.26 * w, bottom - 0.22 * h, x1 - 0.06 * w, bottom, (25, 25, 25))
    c.rect(x0, top + 0.4 * h, x1, bottom - 0.12 * h, _shade(t.colour, 0.85))  # body
    lamp = (200, 230, 240) if t.variant else (30, 30, 220)  # headlights on oncoming cars, tail lights otherwise
    c.rect(x0 + 0.04 * w, top + 0.52 * h, x0 + 0.2 * w, top + 0.62 * h, lamp)
    c.rect(x1 - 0.2 * w, top + 0.52 * h, x1 - 0.04 * w, top + 0.62 * h, lamp)
    c.rect(x0 + 0.38 * w, top + 0.68 * h, x1 - 0.38 * w, top + 0.76 * h, (230, 230, 230))  # number plate


def _draw_pedestrian(c: _Canvas, t: _Thing, box: tuple[float, float, float, float]) -> None:
    x0, top, x1, bottom = box
    w, h = x1 - x0, bottom - top
    cx = (x0 + x1) / 2
    stride = 0.18 * w * math.sin(t.z * 2.5)  # legs swing as the distance changes
    c.rect(cx - 0.36 * w - stride, top + 0.52 * h, cx - 0.04 * w - stride, bottom, t.accent)  # legs
    c.rect(cx + 0.04 * w + stride, top + 0.52 * h, cx + 0.36 * w + stride, bottom, t.accent)
    c.rect(x0, top + 0.2 * h, x1, top + 0.3 * h, t.colour)  # shoulders and arms
    c.rect(cx - 0.4 * w, top + 0.18 * h, cx + 0.4 * w, top + 0.56 * h, t.colour)  # torso
    c.rect(x0, top + 0.2 * h, x0 + 0.16 * w, top + 0.5 * h, t.colour)
    c.rect(x1 - 0.16 * w, top + 0.2 * h, x1, top + 0.5 * h, t.colour)
    c.circle(cx, top + 0.09 * h, 0.09 * h, (120, 160, 205))  # head


def _draw_sign(c: _Canvas, t: _Thing, box: tuple[float, float, float, float]) -> None:
    """Only the sign face is the labelled object; the pole below it is drawn unlabelled."""
    x0, top, x1, bottom = box
    w = x1 - x0
    cx, cy, r = (x0 + x1) / 2, (top + bottom) / 2, w / 2
    ground = cy + (bottom - top) * SIGN_POLE / SIGN_SIZE
    c.rect(cx - 0.05 * w, cy, cx + 0.05 * w, ground, (140, 140, 140), label=False)
    if t.variant == 0:  # prohibitory: red rim, white face
        c.circle(cx, cy, r, t.accent)
        c.circle(cx, cy, 0.72 * r, t.colour)
    elif t.variant == 1:  # warning: red-rimmed triangle
        c.poly([(cx, top), (x1, bottom), (x0, bottom)], t.accent)
        c.poly([(cx, top + 0.35 * w), (x1 - 0.2 * w, bottom - 0.1 * w), (x0 + 0.2 * w, bottom - 0.1 * w)], t.colour)
    else:  # information: blue square, white arrow
        c.rect(x0, top, x1, bottom, (170, 80, 20))
        c.poly([(cx, top + 0.15 * w), (x1 - 0.25 * w, cy), (x0 + 0.25 * w, cy)], (255, 255, 255))
        c.rect(cx - 0.1 * w, cy, cx + 0.1 * w, bottom - 0.15 * w, (255, 255, 255))


def _draw_tree(c: _Canvas, t: _Thing, box: tuple[float, float, float, float]) -> None:
    x0, top, x1, bottom = box
    w = x1 - x0
    c.rect(x0 + 0.42 * w, top + 0.5 * w, x1 - 0.42 * w, bottom, t.accent, label=False)
    c.circle((x0 + x1) / 2, top + 0.5 * w, 0.5 * w, t.colour, label=False)


SIGN_SIZE, SIGN_POLE = 0.9, 2.4  # face side and height of the face's centre above ground, metres
# kind: (width m, height m, height of the bottom above ground m, drawer)
_SHAPES = {CAR: (1.8, 1.5, 0.0, _draw_car), PEDESTRIAN: (0.55, 1.75, 0.0, _draw_pedestrian),
           SIGN: (SIGN_SIZE, SIGN_SIZE, SIGN_POLE - SIGN_SIZE / 2, _draw_sign), TREE: (3.0, 6.0, 0.0, _draw_tree)}


def _background(look: _Look, width: int, height: int) -> np.ndarray:
    """Sky, verge, pavements, road and lane marks, through the same camera as the objects."""
    frame = np.empty((height, width, 3), np.uint8)
    horizon = height * HORIZON
    rows = np.linspace(0.75, 1.0, int(horizon))[:, None, None]
    frame[: int(horizon)] = (np.array(look.sky) * rows).astype(np.uint8)
    frame[int(horizon):] = look.verge
    c = _Canvas(frame)
    z_bottom = FOCAL * width * CAMERA_HEIGHT / (height - horizon)

    def strip(x0: float, x1: float, colour: tuple[int, int, int], near: float = z_bottom, far: float = 400.0) -> None:
        pts = [_project(x, z, 0.0, width, height) for x, z in ((x0, near), (x1, near), (x1, far), (x0, far))]
        c.poly(pts, colour, label=False)

    strip(ROAD[0] - SIDEWALK, ROAD[1] + SIDEWALK, (look.pavement,) * 3)
    strip(*ROAD, (look.road,) * 3)
    for x in (ROAD[0] + 0.3, LANE / 2):  # solid edge lines
        strip(x - 0.08, x + 0.08, (225, 225, 225))
    period, dash = 9.0, 3.0
    for k in range(int(60 / period) + 2):  # centre dashes flow towards the camera as the car drives
        near = k * period - look.travelled % period
        if near + dash > z_bottom:
            strip(-LANE / 2 - 0.08, -LANE / 2 + 0.08, (235, 235, 235), max(near, z_bottom), near + dash)
    return frame


def _project(x: float, z: float, y: float, width: int, height: int) -> tuple[float, float]:
    """Image position of the world point (x, height y above ground, z)."""
    f = FOCAL * width
    return width / 2 + f * x / z, height * HORIZON + f * (CAMERA_HEIGHT - y) / z


def _render(things: list[_Thing], look: _Look, fog: float, noise: np.random.Generator, *, width: int,
            height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw far to near (nearer objects occlude) and label what stays visible enough."""
    c = _Canvas(_background(look, width, height))
    boxes: list[tuple[int, np.ndarray]] = []
    for index, t in enumerate(sorted(things, key=lambda t: -t.z)):
        w_m, h_m, lift, draw = _SHAPES[t.kind]
        x0, bottom = _project(t.x - w_m / 2, t.z, lift, width, height)
        x1, top = _project(t.x + w_m / 2, t.z, lift + h_m, width, height)
        if x1 < 0 or x0 > width or bottom < 0:
            continue
        c.mask[:] = 0
        draw(c, t, (x0, top, x1, bottom))
        own = c.mask > 0
        c.owner[own] = index
        if t.kind != TREE:
            boxes.append((index, np.array([t.kind, max(x0, 0), max(top, 0), min(x1, width), min(bottom, height),
                                           own.sum()])))
    labels = []
    for index, (kind, bx0, by0, bx1, by1, area) in boxes:
        visible = np.count_nonzero(c.owner == index)
        big = min(bx1 - bx0, by1 - by0) >= MIN_BOX_PX * width / 640
        if big and area and visible / area >= MIN_VISIBLE:
            labels.append((kind, (bx0 + bx1) / 2 / width, (by0 + by1) / 2 / height, (bx1 - bx0) / width,
                           (by1 - by0) / height))
    frame = cv2.convertScaleAbs(c.frame, alpha=look.gain)
    frame = np.clip(frame + noise.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)  # sensor noise
    if fog > 0:
        frame = add_fog(frame, fog)
    return frame, np.array(labels, np.float64).reshape(-1, 5)


def road_scene(rng: np.random.Generator, *, fog: float = 0.0, width: int = 640,
               height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """One random labelled road scene: BGR image and YOLO labels (N, 5): class, cx, cy, w, h in [0, 1]."""
    look = _Look.sample(rng)
    return _render(_populate(rng), look, fog, rng, width=width, height=height)


class DriveFrame(NamedTuple):
    timestamp_ns: int  # from the start of the drive
    image: np.ndarray  # BGR
    labels: np.ndarray  # (N, 5): class, cx, cy, w, h, normalised
    fogged: bool


@dataclass
class _Road:
    """The drive's moving world: objects approach, leave, and new ones appear at the far end."""

    rng: np.random.Generator
    things: list[_Thing] = field(default_factory=list)

    def step(self, t: float, dt: float) -> None:
        for thing in self.things:
            if thing.gap_phase is not None:
                gap = 17 + 9 * math.sin(0.25 * t + thing.gap_phase)
                thing.z += float(np.clip(0.5 * (gap - thing.z), -4, 4)) * dt
            else:
                thing.z += thing.rel_speed * dt
        self.things = [th for th in self.things if Z_NEAR < th.z <= Z_FAR + 1]
        for role, (rate, _) in _ROLES.items():
            if self.rng.random() < rate * dt:
                self.things.append(_make(role, self.rng, Z_FAR))
        if all(th.gap_phase is None for th in self.things) and self.rng.random() < 0.1 * dt:
            self.things.append(_make("lead", self.rng, Z_FAR))


def drive(seconds: float = 30.0, hz: float = 10.0, fog: tuple[float, float] = (0.4, 0.6), fog_density: float = 0.7,
          seed: int = 0, *, width: int = 640, height: int = 480, fade_s: float = 1.0) -> Iterator[DriveFrame]:
    """A coherent drive at 10 m/s: frames at `hz`, fog over the `fog` fraction of the drive (fading in and out
    over `fade_s`), so a monitor has a clear-fog-clear sequence with ground truth on every frame."""
    rng = np.random.default_rng(seed)
    look = _Look.sample(rng)
    road = _Road(rng, _populate(rng))
    start, end = fog[0] * seconds, fog[1] * seconds
    for i in range(round(seconds * hz)):
        t = i / hz
        fogged = start <= t < end
        density = fog_density * min(1.0, (t - start + 1 / hz) / fade_s, (end - t) / fade_s) if fogged else 0.0
        look.travelled = EGO_SPEED * t
        image, labels = _render(road.things, look, density, rng, width=width, height=height)
        yield DriveFrame(round(t * 1e9), image, labels, fogged)
        road.step(t, 1 / hz)


def write_dataset(root: str | Path, *, train: int = 800, val: int = 160, seed: int = 0, fogged: float = 0.3,
                  max_fog: float = 0.7) -> Path:
    """An Ultralytics YOLO dataset of `road_scene`s; returns its data.yaml.

    Train and val scenes come from disjoint seed streams, so val is held out; a `fogged` fraction of each
    split is seen through fog of random density up to `max_fog`, so the detector also learns foggy objects.
    """
    from revperception.io import atomic_write_bytes

    root = Path(root).resolve()
    for split_index, (split, count) in enumerate((("train", train), ("val", val))):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, i)))
            density = float(rng.uniform(0.1, max_fog)) if rng.random() < fogged else 0.0
            image, boxes = road_scene(rng, fog=density)
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError(f"could not encode scene {split}/{i}")
            atomic_write_bytes(images / f"{i:05d}.jpg", encoded.tobytes())
            atomic_write_bytes(labels / f"{i:05d}.txt", "".join(
                f"{int(k)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for k, cx, cy, w, h in boxes).encode())
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    data = root / "data.yaml"
    atomic_write_bytes(data, f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}".encode())
    return data

