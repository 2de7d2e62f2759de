"""Image decoding without cv_bridge: every supported encoding, step padding, and bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from revperception.models import Detections
from revperception.models.annotate import annotate
from revperception.ros.conversions import (
    ImageError,
    bgr_to_image,
    compressed_to_bgr,
    image_to_bgr,
    to_detection2d_array,
)

RNG = np.random.default_rng(1)
BGR = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Pack `pixels` row by row with `pad` junk bytes after each row, as a camera driver may."""
    h, w = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = pixels.astype(dtype).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                 step=rows.shape[1] + pad, data=padded.tobytes())


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    ("encoding", "pixels", "expected"),
    [
        ("bgr8", BGR, BGR),
        ("rgb8", BGR[..., ::-1], BGR),
        ("bgra8", cv2.cvtColor(BGR, cv2.COLOR_BGR2BGRA), BGR),
        ("rgba8", cv2.cvtColor(BGR, cv2.COLOR_BGR2RGBA), BGR),
        ("mono8", BGR[..., 0], np.repeat(BGR[..., :1], 3, axis=2)),
    ],
)
def test_encodings_decode_to_bgr(encoding: str, pixels: np.ndarray, expected: np.ndarray, pad: int) -> None:
    assert np.array_equal(image_to_bgr(_msg(np.ascontiguousarray(pixels), encoding, pad)), expected)


# BT.601 limited range, as YUV cameras send it: black, white, and pure red (Y 81, U 90, V 240) two pixels each.
YUV_PIXELS = [(16, 128, 128), (235, 128, 128), (81, 90, 240)]
YUV_BGR = np.array([[[0, 0, 0]] * 2 + [[255, 255, 255]] * 2 + [[0, 0, 254]] * 2], np.uint8)


def _yuv422(order: str) -> np.ndarray:
    """One row of YUV_PIXELS packed two pixels per four bytes in `order` ("UYVY" or "YUYV")."""
    packed = []
    for y, u, v in YUV_PIXELS:
        values = {"Y": y, "U": u, "V": v}
        quad = [values[c] for c in order]
        packed += [quad[0:2], quad[2:4]]
    return np.array([packed], np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(("encoding", "order"), [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"),
                                                 ("yuyv", "YUYV")])
def test_yuv422_encodings_decode_known_pixels(encoding: str, order: str, pad: int) -> None:
    assert np.array_equal(image_to_bgr(_msg(_yuv422(order), encoding, pad)), YUV_BGR)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"])
def test_bayer_encodings_demosaic_a_known_colour(encoding: str, pad: int) -> None:
    """A uniform colour through each mosaic comes back exactly: a pattern read the wrong way round swaps R and B
    or mixes in G."""
    bgr = {"b": 30, "g": 120, "r": 200}
    pattern = encoding.removeprefix("bayer_").removesuffix("8")  # e.g. "rggb": row 0 = r g, row 1 = g b
    mosaic = np.empty((6, 8), np.uint8)
    for i, colour in enumerate(pattern):
        mosaic[i // 2::2, i % 2::2] = bgr[colour]
    decoded = image_to_bgr(_msg(mosaic, encoding, pad))
    assert decoded.shape == (6, 8, 3)
    assert np.array_equal(decoded, np.broadcast_to(np.array([30, 120, 200], np.uint8), (6, 8, 3)))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_the_high_byte(bigendian: bool) -> None:
    mono = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    out = image_to_bgr(_msg(mono, "mono16", pad=2, bigendian=bigendian))
    assert np.array_equal(out, np.repeat((mono >> 8).astype(np.uint8)[..., None], 3, axis=2))


def test_bgr_round_trip() -> None:
    assert np.array_equal(image_to_bgr(bgr_to_image(BGR)), BGR)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (Image(height=2, width=2, encoding="nv12", step=2, data=bytes(6)), "unsupported encoding"),
        (Image(height=0, width=2, encoding="bgr8", step=6, data=b""), "empty image"),
        (Image(height=2, width=2, encoding="bgr8", step=5, data=bytes(10)), "shorter than a row"),
        (Image(height=2, width=2, encoding="bgr8", step=6, data=bytes(11)), "data holds 11 bytes"),
        (Image(height=100_000, width=100_000, encoding="mono8", step=100_000, data=b""), "exceeds"),
    ],
)
def test_bad_images_raise_a_clear_error(msg: Image, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        image_to_bgr(msg)


def test_detections_become_vision_msgs() -> None:
    detections = Detections(
        boxes=np.array([[10, 20, 50, 80]], np.float32), scores=np.array([0.9], np.float32),
        class_ids=np.array([2]), names={0: "person", 2: "car"},
    )
    header = bgr_to_image(BGR).header
    header.frame_id = "camera"
    msg = to_detection2d_array(detections, header)
    (det,) = msg.detections
    assert msg.header.frame_id == det.header.frame_id == "camera"
    assert det.results[0].hypothesis.class_id == "car"
    assert det.results[0].hypothesis.score == pytest.approx(0.9)
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y) == (
        30.0, 50.0, 40.0, 60.0)


def test_png_is_lossless_and_jpeg_close() -> None:
    big = cv2.resize(BGR, (70, 50), interpolation=cv2.INTER_NEAREST)
    png = CompressedImage(format="png", data=cv2.imencode(".png", big)[1].tobytes())
    np.testing.assert_array_equal(compressed_to_bgr(png), big)
    jpeg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=cv2.imencode(".jpg", big)[1].tobytes())
    assert np.abs(compressed_to_bgr(jpeg).astype(int) - big).mean() < 40


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty"), (b"\xff\xd8\xff\xe0junk", "cannot decode")])
def test_bad_compressed_images_raise_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        compressed_to_bgr(CompressedImage(format="jpeg", data=data))


def test_annotate_draws_boxes_and_banner_on_a_copy() -> None:
    frame = np.zeros((120, 160, 3), np.uint8)
    detections = Detections(boxes=np.array([[10, 20, 80, 100]], np.float32), scores=np.array([0.9], np.float32),
                            class_ids=np.array([0]), names={0: "car"})
    out = annotate(frame, detections, banner="full")
    assert frame.sum() == 0 and out.shape == frame.shape
    assert out[60, 10].any() and out[60, 80].any()  # the box edges
    assert not out[60, 45].any()  # its inside is left alone
