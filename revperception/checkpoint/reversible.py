"""A reversible model as a checkpoint: the shared weights and each level's own tensors, with the architecture,
the channel groups, the levels and their encodings in the JSON document (checkpoint/format.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from revperception.checkpoint.format import (
    SUFFIX,
    Checkpoint,
    CheckpointCorruptError,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from revperception.models import build_model
from revperception.pruning import FULL, ChannelGroup, Levels, encodings
from revperception.pruning.prune import PrunedModel

REVERSIBLE_KIND = "reversible-yolov5"
PRIVATE_PREFIX = "level/"  # a level's own tensors are stored as level/<level>/<state-dict name>


def save_reversible(path: str | Path, pruned: PrunedModel) -> Checkpoint:
    """A pruned model as one checkpoint: shared weights + architecture, coupling map, levels, encodings."""
    if not str(path).endswith(SUFFIX):
        raise ValueError(f"checkpoint names end in {SUFFIX}, got {path}")
    metadata = {
        "kind": REVERSIBLE_KIND,
        "arch": pruned.arch,
        "names": {str(k): v for k, v in pruned.names.items()},
        "stride": pruned.stride,
        "imgsz": pruned.imgsz,
        "groups": [g.to_json() for g in pruned.groups],
        "levels": {"names": list(pruned.levels.names), "keep": pruned.levels.to_json(),
                   "imgsz": dict(pruned.levels.imgsz)},
        "encodings": {name: code.hex() for name, code in encodings(pruned.groups, pruned.levels).items()},
        "info": pruned.info,
    }
    private = {f"{PRIVATE_PREFIX}{level}/{name}": tensor
               for level, tensors in pruned.private.items() for name, tensor in tensors.items()}
    return save_checkpoint(path, {**pruned.model.state_dict(), **private}, metadata)


def load_reversible(path: str | Path) -> PrunedModel:
    """Load and verify a reversible checkpoint and rebuild its network, without executing any pickle."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint.metadata
    try:
        if meta.get("kind") != REVERSIBLE_KIND:
            raise CheckpointCorruptError(f"checkpoint {path} is a {meta.get('kind')!r}, not a {REVERSIBLE_KIND}")
        groups = [ChannelGroup.from_json(g) for g in meta["groups"]]
        levels = Levels.from_json(meta["levels"]["keep"], meta["levels"]["names"], meta["levels"].get("imgsz"))
        model = build_model(meta["arch"])
        shared = {k: v for k, v in checkpoint.tensors.items() if not k.startswith(PRIVATE_PREFIX)}
        model.load_state_dict(shared, strict=True, assign=True)
        private: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in checkpoint.tensors.items():
            if key.startswith(PRIVATE_PREFIX):
                level, _, name = key.removeprefix(PRIVATE_PREFIX).partition("/")
                if level not in levels.keep or level == FULL or name not in shared \
                        or shared[name].shape != tensor.shape:
                    raise ValueError(f"level tensor {key!r} matches no level below full and model entry")
                private.setdefault(level, {})[name] = tensor
        return PrunedModel(model=model.eval(), names={int(k): v for k, v in meta["names"].items()},
                           stride=int(meta["stride"]), imgsz=int(meta["imgsz"]), arch=meta["arch"], groups=groups,
                           levels=levels, info=meta.get("info", {}), private=private)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointCorruptError(f"checkpoint {path} does not describe a reversible model: {err}") from err
