"""The *.rvp.safetensors format: round trips, the hash, every kind of bad file, and atomic saves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from revperception.checkpoint import (
    FORMAT_VERSION,
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

LOADERS = [pytest.param(load_checkpoint, id="load_checkpoint"), pytest.param(read_metadata, id="read_metadata")]
METADATA = {"model": "yolov5n", "pruning": {"ratio": 0.25, "layers": [1, 2, 3], "masks": {"b.0": [True, False]}},
            "note": None, "unicode": "Größe ✓"}


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    return {
        "model.0.conv.weight": torch.randn(3, 2, 3, 3, generator=generator),
        "model.0.bn.weight": torch.randn(5, generator=generator).half(),
        "model.0.bn.num_batches_tracked": torch.tensor(123456789012, dtype=torch.int64),  # 0-d
        "anchors": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "transposed": base.t(),  # non-contiguous view
        "empty": torch.zeros(0, 3),
    }


def _assert_same(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert torch.equal(actual[name], tensor), name


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header JSON) of a safetensors file, parsed independently of the module under test."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return length, json.loads(raw[8:8 + length])


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / f"model{SUFFIX}"
    save_checkpoint(path, _tensors(), METADATA)
    return path


def test_round_trip_keeps_tensors_and_metadata(saved: Path) -> None:
    loaded = load_checkpoint(saved)
    _assert_same(loaded.tensors, _tensors())
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in loaded.tensors.values())
    assert loaded.metadata == {**METADATA, "format_version": FORMAT_VERSION, "weights_sha256": loaded.sha256}
    assert loaded.sha256 == weights_sha256(_tensors())
    assert loaded.path == saved


def test_save_returns_what_a_load_returns(tmp_path: Path) -> None:
    saved = save_checkpoint(tmp_path / "m.rvp.safetensors", _tensors(), {"shape": (1, 2), "config": {"a": 1}})
    assert isinstance(saved, Checkpoint)
    loaded = load_checkpoint(saved.path)
    assert saved.metadata == loaded.metadata
    assert saved.metadata["shape"] == [1, 2]  # tuples come back as lists, already in the returned metadata
    assert saved.sha256 == loaded.sha256
    _assert_same(saved.tensors, loaded.tensors)


def test_read_metadata_reads_the_header_only(saved: Path) -> None:
    assert read_metadata(saved) == load_checkpoint(saved).metadata
    _flip_data_byte(saved)  # the weights no longer match the hash, yet the header alone is still readable
    assert read_metadata(saved)["pruning"] == METADATA["pruning"]
    with pytest.raises(CheckpointTamperedError):
        load_checkpoint(saved)


def test_sha256_is_canonical(tmp_path: Path) -> None:
    tensors = _tensors()
    reordered = dict(reversed(list(tensors.items())))
    assert weights_sha256(reordered) == weights_sha256(tensors)
    first = save_checkpoint(tmp_path / "a.rvp.safetensors", tensors, METADATA)
    second = save_checkpoint(tmp_path / "b.rvp.safetensors", reordered, dict(reversed(list(METADATA.items()))))
    assert first.sha256 == second.sha256 == load_checkpoint(first.path).sha256
    assert first.path.read_bytes() == second.path.read_bytes()  # reproducible files, not only hashes

    # The hash covers names, dtypes and shapes, not only the bytes.
    weight = torch.arange(6, dtype=torch.float32)
    hashes = {
        weights_sha256({"w": weight}),
        weights_sha256({"v": weight}),
        weights_sha256({"w": weight.view(torch.int32)}),
        weights_sha256({"w": weight.reshape(2, 3)}),
        weights_sha256({"w": weight.reshape(3, 2)}),
        weights_sha256({"w": weight, "x": torch.zeros(0)}),
    }
    assert len(hashes) == 6
    strided = weight.reshape(2, 3).t().contiguous().t()  # same values, other strides
    assert weights_sha256({"w": strided}) == weights_sha256({"w": weight.reshape(2, 3)})


def test_tied_weights_are_saved_as_copies(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    tensors = {"embed": shared, "head": shared, "row": shared[1]}
    save_checkpoint(tmp_path / "tied.rvp.safetensors", tensors, {})
    _assert_same(load_checkpoint(tmp_path / "tied.rvp.safetensors").tensors, tensors)


def test_bad_metadata_is_rejected_before_writing(tmp_path: Path) -> None:
    for metadata, error, match in [
        ({"tensor": torch.zeros(1)}, TypeError, "not JSON"),
        ({"lr": float("nan")}, ValueError, "not JSON"),
        ({"classes": {0: "person"}}, TypeError, r"metadata\['classes'\] has key 0"),
        (["not", "a", "mapping"], TypeError, "must be a mapping"),
    ]:
        with pytest.raises(error, match=match):
            save_checkpoint(tmp_path / "bad.rvp.safetensors", _tensors(), metadata)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    for loader in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointNotFoundError, match=r"nope\.rvp\.safetensors does not exist"):
            loader(tmp_path / "nope.rvp.safetensors")


@pytest.mark.parametrize("loader", LOADERS)
def test_a_directory_is_a_checkpoint_error(tmp_path: Path, loader: Any) -> None:
    with pytest.raises(CheckpointError, match="cannot be read"):
        loader(tmp_path)


def _cut_points(path: Path) -> dict[str, int]:
    length, header = _header(path)
    data = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    return {"empty": 0, "in-length": 3, "header-start": 9, "mid-header": 8 + length // 2,
            "header-end": 8 + length, "mid-data": 8 + length + data // 2, "last-byte": 8 + length + data - 1}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("cut", ["empty", "in-length", "header-start", "mid-header", "header-end", "mid-data",
                                 "last-byte"])
def test_truncated_files_are_corrupt(saved: Path, loader: Any, cut: str) -> None:
    size = _cut_points(saved)[cut]
    saved.write_bytes(saved.read_bytes()[:size])
    with pytest.raises(CheckpointCorruptError, match="is empty" if size == 0 else "is truncated") as info:
        loader(saved)
    assert str(saved) in str(info.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_malformed_files_are_corrupt(tmp_path: Path, saved: Path, loader: Any) -> None:
    rng = np.random.default_rng(7)
    _, header = _header(saved)
    meta = header["__metadata__"]
    good = saved.read_bytes()
    cases = {
        "random": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a safetensors file"),
        "not-json": (struct.pack("<Q", 8) + b"{oops!!}", "header is not JSON"),
        "json-list": (struct.pack("<Q", 8) + b"[1,2,3] ", "not a JSON object"),
        "trailing": (good + b"\0" * 16, "16 unexpected bytes"),
        "bad-offsets": (_with_header(good, {**header, "anchors": {**header["anchors"], "data_offsets": [9, 2]}}),
                        "malformed header entry for tensor 'anchors'"),
        "document-not-json": (_with_header(good, {**header, "__metadata__": {"revperception": "{"}}),
                              "document that is not JSON"),
        "no-sha": (_with_header(good, {**header, "__metadata__": {"revperception": json.dumps(
            {**json.loads(meta["revperception"]), "weights_sha256": None})}}), "no valid weights_sha256"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name}.rvp.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointCorruptError, match=match):
            loader(path)


def _with_header(original: bytes, header: dict[str, Any]) -> bytes:
    """`original` with its header replaced (the data region kept), as a hand-edited file would be."""
    (length,) = struct.unpack("<Q", original[:8])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + original[8 + length:]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("metadata", [None, {"format": "pt"}], ids=["no-metadata", "foreign-metadata"])
def test_plain_safetensors_is_not_a_checkpoint(tmp_path: Path, loader: Any, metadata: dict[str, str] | None) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, path, metadata=metadata)
    with pytest.raises(CheckpointCorruptError, match="has no 'revperception' metadata"):
        loader(path)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("version", "match"),
    [(2, "format_version 2 \\(written by a newer revperception\\); this revperception reads version 1"),
     (0, "format_version 0; this"), ("1", "format_version '1'"), (None, "format_version None"),
     (..., "has no format_version")],
    ids=["newer", "older", "string", "null", "missing"],
)
def test_unsupported_versions(tmp_path: Path, loader: Any, version: Any, match: str) -> None:
    tensors = {"w": torch.ones(3)}
    document: dict[str, Any] = {"weights_sha256": weights_sha256(tensors)}
    if version is not ...:
        document["format_version"] = version
    path = tmp_path / "v.rvp.safetensors"
    save_file(tensors, path, metadata={"revperception": json.dumps(document)})
    with pytest.raises(CheckpointVersionError, match=match):
        loader(path)
    document["format_version"] = FORMAT_VERSION  # at the supported version the same file loads
    save_file(tensors, path, metadata={"revperception": json.dumps(document)})
    assert loader(path)


def _flip_data_byte(path: Path) -> None:
    """Flip one bit in the first byte of the conv weight's data, located from the header."""
    length, header = _header(path)
    offset = 8 + length + header["model.0.conv.weight"]["data_offsets"][0]
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_byte_is_tampering(saved: Path) -> None:
    _flip_data_byte(saved)
    with pytest.raises(CheckpointTamperedError, match=r"weights sha256 mismatch: header says [0-9a-f]{12}\.\.\., "
                                                      r"weights hash to [0-9a-f]{12}\.\.\.; the file was modified"):
        load_checkpoint(saved)
    loaded = load_checkpoint(saved, verify=False)
    original = _tensors()
    assert not torch.equal(loaded.tensors["model.0.conv.weight"], original["model.0.conv.weight"])
    _assert_same({k: v for k, v in loaded.tensors.items() if k != "model.0.conv.weight"},
                 {k: v for k, v in original.items() if k != "model.0.conv.weight"})
    assert loaded.sha256 != weights_sha256(loaded.tensors)


class _FailingTensors(Mapping[str, torch.Tensor]):
    """A state dict whose iteration breaks after the first tensor, as a lazily produced one may."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __len__(self) -> int:
        return len(self._tensors)

    def __iter__(self) -> Iterator[str]:
        yield next(iter(self._tensors))
        raise RuntimeError("state dict producer failed")


@contextlib.contextmanager
def _fail_writes_beyond(limit: int) -> Iterator[None]:
    """Make this process's writes fail past `limit` bytes (EFBIG): a real disk-full-like failure mid-write."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_failed_saves_leave_the_old_file_untouched(saved: Path) -> None:
    before = saved.read_bytes()
    bigger = {"w": torch.randn(64, 1024)}  # 256 KiB: fails well past the start of the temp file

    with pytest.raises(RuntimeError, match="state dict producer failed"):
        save_checkpoint(saved, _FailingTensors(_tensors()), METADATA)
    with pytest.raises(TypeError, match="not JSON"):
        save_checkpoint(saved, bigger, {"when": object()})
    with _fail_writes_beyond(4096), pytest.raises(CheckpointError, match=f"could not write checkpoint {saved}"):
        save_checkpoint(saved, bigger, METADATA)

    assert saved.read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]  # no temp file left behind
    _assert_same(load_checkpoint(saved).tensors, _tensors())


def test_successful_save_replaces_the_file(saved: Path) -> None:
    replacement = {"w": torch.full((2, 2), 7.0)}
    save_checkpoint(saved, replacement, {"generation": 2})
    loaded = load_checkpoint(saved)
    _assert_same(loaded.tensors, replacement)
    assert loaded.metadata["generation"] == 2
    assert list(saved.parent.iterdir()) == [saved]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask  # not the 0600 of a mkstemp file


def test_save_into_a_missing_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        save_checkpoint(tmp_path / "missing" / "m.rvp.safetensors", _tensors(), {})
    assert list(tmp_path.iterdir()) == []
