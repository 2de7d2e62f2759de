"""The detector interface on a real YOLOv5 built from Ultralytics' YAML (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from revperception.models import Detector, load_model


@pytest.fixture(scope="module")
def yolov5n():
    torch.manual_seed(0)
    return load_model("yolov5n.yaml")


def test_yaml_model_has_coco_names_and_stride(yolov5n) -> None:
    assert yolov5n.names[0] == "person" and len(yolov5n.names) == 80
    assert yolov5n.stride == 32


def test_letterbox_keeps_the_camera_aspect(yolov5n) -> None:
    detector = Detector(yolov5n.model, yolov5n.names, stride=yolov5n.stride, imgsz=640)
    x = detector.preprocess(np.zeros((480, 640, 3), np.uint8))
    assert tuple(x.shape) == (1, 3, 480, 640)
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0


def test_boxes_are_in_image_pixels(yolov5n) -> None:
    # Fresh weights score every anchor near zero: a zero threshold still exercises NMS and rescaling.
    detector = Detector(yolov5n.model, yolov5n.names, stride=yolov5n.stride, imgsz=320, conf=0.0, max_det=50)
    image = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    det = detector.predict(image)
    assert 0 < len(det) <= 50
    assert det.boxes.shape == (len(det), 4)
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= 500).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= 300).all()
    assert (np.diff(det.scores) <= 0).all(), "detections come sorted by score"


def test_non_image_input_is_refused(yolov5n) -> None:
    detector = Detector(yolov5n.model, yolov5n.names)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.predict(np.zeros((10, 10), np.uint8))


def test_unknown_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported weights"):
        load_model("model.onnx")
    with pytest.raises(FileNotFoundError):
        load_model("missing.pt")
