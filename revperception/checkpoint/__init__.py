"""Checkpoints: the ``*.rvp.safetensors`` file format (format.py: weights and a JSON document, verified,
written atomically, never unpickled) and the reversible model stored in it (reversible.py)."""

from revperception.checkpoint.format import (
    FORMAT_VERSION,
    METADATA_KEY,
    SUFFIX,
    Checkpoint,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointTamperedError,
    CheckpointVersionError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_sha256,
)
from revperception.checkpoint.reversible import PRIVATE_PREFIX, REVERSIBLE_KIND, load_reversible, save_reversible

__all__ = [
    "FORMAT_VERSION", "METADATA_KEY", "PRIVATE_PREFIX", "REVERSIBLE_KIND", "SUFFIX", "Checkpoint",
    "CheckpointCorruptError", "CheckpointError", "CheckpointNotFoundError", "CheckpointTamperedError",
    "CheckpointVersionError", "load_checkpoint", "load_reversible", "read_metadata", "save_checkpoint",
    "save_reversible", "weights_sha256",
]
