"""Offline work on models: evaluation now; fine-tuning, losses and reports as they land."""

from revperception.offline.evaluate import evaluate

__all__ = ["evaluate"]
