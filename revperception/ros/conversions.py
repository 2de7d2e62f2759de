"""sensor_msgs/Image and CompressedImage <-> numpy, Detections -> vision_msgs, without cv_bridge (no wheel exists)."""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from revperception.models import Detections

# encoding -> (channels, dtype, OpenCV conversion to BGR or None)
_ENCODINGS: dict[str, tuple[int, np.dtype, int | None]] = {
    "bgr8": (3, np.dtype(np.uint8), None),
    "rgb8": (3, np.dtype(np.uint8), cv2.COLOR_RGB2BGR),
    "bgra8": (4, np.dtype(np.uint8), cv2.COLOR_BGRA2BGR),
    "rgba8": (4, np.dtype(np.uint8), cv2.COLOR_RGBA2BGR),
    "mono8": (1, np.dtype(np.uint8), cv2.COLOR_GRAY2BGR),
    "mono16": (1, np.dtype(np.uint16), cv2.COLOR_GRAY2BGR),
    # YUV 4:2:2, two bytes a pixel. ROS's `yuv422` is UYVY byte order, `yuv422_yuy2` is YUYV (image_encodings.hpp).
    "yuv422": (2, np.dtype(np.uint8), cv2.COLOR_YUV2BGR_UYVY),
    "uyvy": (2, np.dtype(np.uint8), cv2.COLOR_YUV2BGR_UYVY),
    "yuv422_yuy2": (2, np.dtype(np.uint8), cv2.COLOR_YUV2BGR_YUYV),
    "yuyv": (2, np.dtype(np.uint8), cv2.COLOR_YUV2BGR_YUYV),
    # Bayer mosaics, named by their first two pixels in ROS and by the second row's in OpenCV (cv_bridge's map).
    "bayer_rggb8": (1, np.dtype(np.uint8), cv2.COLOR_BayerBG2BGR),
    "bayer_bggr8": (1, np.dtype(np.uint8), cv2.COLOR_BayerRG2BGR),
    "bayer_gbrg8": (1, np.dtype(np.uint8), cv2.COLOR_BayerGR2BGR),
    "bayer_grbg8": (1, np.dtype(np.uint8), cv2.COLOR_BayerGB2BGR),
}
MAX_PIXELS = 8192 * 8192  # a larger frame is a corrupt header, not a camera


class ImageError(ValueError):
    """A message that cannot be turned into an image; the node skips it and counts it."""


def image_to_bgr(msg: Image) -> np.ndarray:
    """Decode a sensor_msgs/Image into an HxWx3 uint8 BGR array, honouring `step` row padding."""
    if msg.encoding not in _ENCODINGS:
        raise ImageError(f"unsupported encoding {msg.encoding!r} (supported: {', '.join(_ENCODINGS)})")
    channels, dtype, code = _ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageError("empty image (zero width or height)")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image of {width}x{height} exceeds the {MAX_PIXELS}-pixel limit")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f"step {step} is shorter than a row of {row_bytes} bytes")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * height:
        raise ImageError(f"data holds {data.size} bytes, {step * height} expected for {height} rows of {step}")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.copy().view(dtype.newbyteorder(">" if msg.is_bigendian else "<")).astype(dtype, copy=False)
    pixels = pixels.reshape(height, width, channels)
    if dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if code is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, code)


def compressed_to_bgr(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG or PNG CompressedImage (any `format` string; the bytes say what they are) to BGR."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageError("empty compressed image")
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if frame is None:
        raise ImageError(f"cannot decode {data.size} bytes of {msg.format or 'unknown format'!r} as JPEG or PNG")
    if frame.shape[0] * frame.shape[1] > MAX_PIXELS:
        raise ImageError(f"image of {frame.shape[1]}x{frame.shape[0]} exceeds the {MAX_PIXELS}-pixel limit")
    return frame


def bgr_to_image(array: np.ndarray, header: Header | None = None) -> Image:
    """An HxWx3 uint8 BGR array as a bgr8 sensor_msgs/Image."""
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = "bgr8"
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * 3)
    msg.data = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return msg


def to_detection2d_array(detections: Detections, header: Header) -> Detection2DArray:
    """Detections as vision_msgs: class_id is the class name, bbox in image pixels, header of the image."""
    out = Detection2DArray(header=header)
    for (x1, y1, x2, y2), score, name in zip(
        detections.boxes.tolist(), detections.scores.tolist(), detections.class_names, strict=True
    ):
        det = Detection2D(header=header)
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = name
        hypothesis.hypothesis.score = score
        det.results.append(hypothesis)
        out.detections.append(det)
    return out
