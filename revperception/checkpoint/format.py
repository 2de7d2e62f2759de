"""The ``*.rvp.safetensors`` checkpoint format: weights plus a JSON document, in one file.

Weights are stored with safetensors, so loading a checkpoint never unpickles anything: a checkpoint
from an untrusted source can be inspected and loaded without running its code. The JSON document
(pruning state, model config, provenance, ...) lives in the safetensors header under the key
``"revperception"``, next to ``format_version`` and a ``weights_sha256`` that detects files modified
after they were written. Saves are atomic, so a crash or full disk never leaves a half-written
checkpoint where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from revperception.io import atomic_path

FORMAT_VERSION: int = 1
SUFFIX = ".rvp.safetensors"

METADATA_KEY = "revperception"
"""The safetensors ``__metadata__`` entry that holds our JSON document (safetensors metadata is str -> str)."""

_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger length field means "not safetensors"


class CheckpointError(Exception):
    """Any problem with a checkpoint file: callers that only report the problem catch this one."""


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint path does not exist."""


class CheckpointCorruptError(CheckpointError):
    """Truncated, not safetensors, a malformed header or JSON document, or missing metadata keys."""


class CheckpointVersionError(CheckpointError):
    """``format_version`` is missing or is not the one this revperception reads (newer or older)."""


class CheckpointTamperedError(CheckpointError):
    """The weights no longer hash to the ``weights_sha256`` recorded in the header."""


@dataclass(frozen=True, eq=False)  # eq=False: `==` on dicts of tensors is ambiguous, so compare fields yourself
class Checkpoint:
    """Tensors and the JSON document of one checkpoint (``metadata`` includes format_version and weights_sha256)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def sha256(self) -> str:
        """The weights hash recorded in the header (checked against the tensors on load unless verify=False)."""
        return self.metadata["weights_sha256"]


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Canonical hash: sorted names, each name + dtype + shape + raw little-endian bytes.

    It depends on the weights only, not on dict order, device, strides or the file layout, so the same
    weights hash the same whether they were just trained, saved, or loaded back. Every field is
    length-prefixed, so no two different tensor sets produce the same byte stream.
    """
    digest = hashlib.sha256(b"revperception-weights-v1\0")
    digest.update(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weights[{name!r}] is a {type(tensor).__name__}, not a torch.Tensor")
        data = _le_bytes(tensor)
        for field in (name.encode(), str(tensor.dtype).removeprefix("torch.").encode()):
            digest.update(struct.pack("<Q", len(field)))
            digest.update(field)
        digest.update(struct.pack(f"<Q{tensor.dim()}Q", tensor.dim(), *tensor.shape))
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Checkpoint:
    """Atomic (`io.atomic_path`): a crash or a full disk never leaves half a checkpoint where a good one was.

    Adds format_version and weights_sha256 to the metadata (replacing any given, so a loaded checkpoint's
    metadata can be saved again). Tensors are saved contiguous, on CPU; tensors sharing memory (tied
    weights) are stored as separate copies. Metadata must be JSON (str keys, finite floats; tuples come back
    as lists): otherwise TypeError/ValueError is raised before anything is written. A failed write (disk full,
    missing directory, ...) raises CheckpointError. On any failure the temp file is removed and an existing
    file at `path` is left untouched.
    """
    path = Path(path)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"checkpoint metadata must be a mapping, not {type(metadata).__name__}")
    _check_json(metadata)  # before the hash, so bad metadata fails fast and without touching the disk
    prepared = _prepare_tensors(tensors)
    document = {**metadata, "format_version": FORMAT_VERSION, "weights_sha256": weights_sha256(prepared)}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)

    try:
        with atomic_path(path) as tmp:
            save_file(prepared, tmp, metadata={METADATA_KEY: text})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from err
    return Checkpoint(tensors=prepared, metadata=json.loads(text), path=path)


def load_checkpoint(path: str | Path, *, device: str = "cpu", verify: bool = True) -> Checkpoint:
    """Reads header, checks version, loads tensors with safetensors (no pickle), recomputes sha256 and compares.

    Tensors are read and verified on the CPU, then moved to `device`. verify=False skips the hash check
    (for forensics on a file reported as tampered); the structure and version are still checked.
    """
    path = Path(path)
    _read_header(path)  # precise truncated / not-safetensors / version errors before safetensors sees the file
    try:
        with safe_open(path, framework="pt", device="cpu") as reader:
            # Metadata and tensors from the same open file: consistent even if `path` is replaced meanwhile.
            document = _parse_document(reader.metadata(), path)
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist") from err
    except (SafetensorError, OSError) as err:
        raise CheckpointCorruptError(f"checkpoint {path} could not be read by safetensors ({err})") from err
    if verify:
        actual = weights_sha256(tensors)
        if actual != document["weights_sha256"]:
            raise CheckpointTamperedError(
                f"checkpoint {path} weights sha256 mismatch: header says {document['weights_sha256'][:12]}..., "
                f"weights hash to {actual[:12]}...; the file was modified after it was saved"
            )
    if torch.device(device) != torch.device("cpu"):
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return Checkpoint(tensors=tensors, metadata=document, path=path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the JSON header (no tensor data read): fast, for `inspect`-style commands.

    Raises the same errors as load_checkpoint for missing, corrupt (truncation included) and
    wrong-version files; it cannot detect tampered weights, since that needs the data.
    """
    path = Path(path)
    return _parse_document(_read_header(path).get("__metadata__"), path)


def _le_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements as little-endian bytes (safetensors' byte order), without a copy where possible."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    if sys.byteorder != "little" and tensor.element_size() > 1:
        flat = flat.reshape(-1, tensor.element_size())[:, ::-1].copy().reshape(-1)
    return memoryview(flat)


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory: what safetensors can write and load back unchanged."""
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided:
            raise ValueError(f"tensors[{name!r}] has layout {tensor.layout}; only dense tensors can be saved")
        cpu = tensor.detach().to("cpu").contiguous()
        storage = cpu.untyped_storage().data_ptr()
        if storage in storages:  # tied weight or a view of another tensor: safetensors refuses shared memory
            cpu = cpu.clone()
            storage = cpu.untyped_storage().data_ptr()
        storages.add(storage)
        prepared[name] = cpu
    return prepared


def _check_json(metadata: Mapping[str, Any]) -> None:
    """Refuse metadata that json would reject or silently change (non-str keys), naming the offending value."""
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise type(err)(f"checkpoint metadata is not JSON: {err}") from err

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(f"checkpoint metadata{where} has key {key!r}; JSON object keys must be str")
                walk(item, f"{where}[{key!r}]")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(metadata, "")


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header (8-byte little-endian length + JSON), checked against the file's real size.

    Parsing it here, rather than only wrapping safetensors' errors, tells "truncated" from "not a
    safetensors file" and reads no tensor data.
    """
    raw, data_size = _header_bytes(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointCorruptError(f"checkpoint {path} is not a safetensors file (header is not JSON: {err})") \
            from err
    if not isinstance(header, dict):
        raise CheckpointCorruptError(f"checkpoint {path} is not a safetensors file (header is not a JSON object)")
    extra = header.get("__metadata__", {})
    if not (isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())):
        raise CheckpointCorruptError(f"checkpoint {path} has a malformed __metadata__ header (not str -> str)")

    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointCorruptError(f"checkpoint {path} has a malformed header entry for tensor {name!r}")
        end = max(end, offsets[1])
    if end > data_size:
        raise _truncated(path, f"tensor data should be {end} bytes, the file holds {data_size}")
    if end < data_size:
        raise CheckpointCorruptError(f"checkpoint {path} has {data_size - end} unexpected bytes after the tensor data")
    return header


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """The raw header JSON and the number of bytes after it (the tensor data region)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
            if size == 0:
                raise CheckpointCorruptError(f"checkpoint {path} is empty (0 bytes)")
            if len(prefix) < 8:
                raise _truncated(path, f"{size} bytes, fewer than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES or length > size - 8:
                raise _truncated(path, f"header length field says {length} bytes, the file holds {size - 8} after it")
            return file.read(length), size - 8 - length
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist") from err
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror or err}") from err


def _truncated(path: Path, detail: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"checkpoint {path} is truncated or not a safetensors file ({detail})")


def _parse_document(safetensors_metadata: object, path: Path) -> dict[str, Any]:
    """Our JSON document from safetensors' str -> str metadata, with its version and hash field checked."""
    if not isinstance(safetensors_metadata, dict) or METADATA_KEY not in safetensors_metadata:
        raise CheckpointCorruptError(
            f"checkpoint {path} has no {METADATA_KEY!r} metadata: it is a safetensors file, "
            "but not a revperception checkpoint"
        )
    text = safetensors_metadata[METADATA_KEY]
    try:
        document = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as err:
        raise CheckpointCorruptError(
            f"checkpoint {path} has a {METADATA_KEY!r} document that is not JSON ({err})"
        ) from err
    if not isinstance(document, dict):
        raise CheckpointCorruptError(f"checkpoint {path} has a {METADATA_KEY!r} document that is not a JSON object")

    version = document.get("format_version")
    if "format_version" not in document:
        raise CheckpointVersionError(
            f"checkpoint {path} has no format_version; this revperception reads version {FORMAT_VERSION}"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        newer = " (written by a newer revperception)" if type(version) is int and version > FORMAT_VERSION else ""
        raise CheckpointVersionError(
            f"checkpoint {path} has format_version {version!r}{newer}; "
            f"this revperception reads version {FORMAT_VERSION}"
        )
    digest = document.get("weights_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise CheckpointCorruptError(f"checkpoint {path} has no valid weights_sha256 in its {METADATA_KEY!r} document")
    return document
