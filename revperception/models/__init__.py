"""Loading YOLOv5 models and running them on images: one detector interface for every family."""

from revperception.models.detector import Detections, Detector
from revperception.models.loader import LoadedModel, build_model, load_model

__all__ = ["Detections", "Detector", "LoadedModel", "build_model", "load_model"]
