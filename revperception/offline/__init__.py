"""Offline work on models: evaluation, dataset splits, fine-tuning down and up, reports."""

from revperception.offline.evaluate import evaluate

__all__ = ["evaluate"]
