"""Original ultralytics/yolov5 release checkpoints (anchor-based head), loaded without the yolov5 code.

A release `.pt` is a pickle of the yolov5 repository's module objects. Unpickling it normally imports
that code and runs whatever the pickle names; here the pickle's global names are first checked against
the handful such a checkpoint uses, then torch's weights-only unpickler loads it with every module class
allowlisted as an inert stub that merely receives its state, and the tensors are copied into a network
rebuilt from `model.yaml` with Ultralytics' building blocks and `AnchorDetect`, whose eval output is
Ultralytics' (B, 4 + nc, anchors) layout.
"""

from __future__ import annotations

import math
import pickle
import pickletools
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.nn.modules import C3, Concat, Conv
from ultralytics.utils.ops import make_divisible
from ultralytics.utils.torch_utils import initialize_weights

from revperception.models.loaded import YOLOV5_RELEASE, LoadedModel


class _Stub(nn.Module):
    """Receives the pickled state (parameters, buffers, children, attributes) of a yolov5 module; runs nothing."""

    def forward(self, *args: Any) -> None:
        raise RuntimeError(f"{type(self).__name__} is an unpickling stub; build the network with build_release_model")


# Every class a release checkpoint pickles, each mapped to its own stub so the stub tree keeps the type names.
_STUB_CLASSES = [
    ("models.yolo", "Model"), ("models.yolo", "DetectionModel"), ("models.yolo", "Detect"),
    ("models.common", "Conv"), ("models.common", "C3"), ("models.common", "Bottleneck"),
    ("models.common", "SPPF"), ("models.common", "Concat"),
    ("torch.nn.modules.conv", "Conv2d"), ("torch.nn.modules.batchnorm", "BatchNorm2d"),
    ("torch.nn.modules.activation", "SiLU"), ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.upsampling", "Upsample"),
    ("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.container", "ModuleList"),
]
_STUBS: dict[tuple[str, str], type[_Stub]] = {
    (module, name): type(name, (_Stub,), {"__module__": __name__}) for module, name in _STUB_CLASSES
}
# The stubs under the names the pickle gives them, for torch's weights-only unpickler (it matches "module.name").
_SAFE_GLOBALS = [(stub, f"{module}.{name}") for (module, name), stub in _STUBS.items()]
# The other names a release pickle holds besides torch.*Storage, all on torch's own weights-only allowlist.
_TORCH_GLOBALS = {
    ("collections", "OrderedDict"),
    ("__builtin__", "set"),  # protocol-2 pickles name the Python 2 module
    ("builtins", "set"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
}
_MODEL_CLASSES = {("models.yolo", "Model"), ("models.yolo", "DetectionModel")}  # v6.x and v7.0 names
# safe_globals edits torch's process-wide allowlist: one load at a time, so none drops the stubs mid-unpickling.
_LOAD_LOCK = threading.Lock()


def _is_release_global(module: str, name: str) -> bool:
    """Whether a release checkpoint uses this global; torch's allowlist alone is wider (Counter, bytes, ...)."""
    return (
        (module, name) in _STUBS or (module, name) in _TORCH_GLOBALS
        or (module == "torch" and name.endswith("Storage"))
    )


class SPPF(nn.Module):
    """yolov5's SPPF; Ultralytics' current SPPF drops the activation of `cv1`, which release weights expect."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class AnchorDetect(nn.Module):
    """yolov5's anchor-based head, decoding to Ultralytics' layout with class scores = objectness * class.

    Ultralytics' NMS keeps boxes whose best class score beats `conf`; with obj * cls folded in, that is
    exactly yolov5's candidate rule, so both families share one post-processing.
    """

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # xywh, objectness, classes per anchor
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        # In units of each level's stride, as release checkpoints store them (build_release_model divides).
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Training: raw maps (B, na, ny, nx, 5 + nc). Eval: decoded (B, 4 + nc, anchors)."""
        maps = []
        for conv, x in zip(self.m, xs, strict=True):
            p = conv(x)
            bs, _, ny, nx = p.shape
            maps.append(p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return maps if self.training else self.decode(maps)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """yolov5 v6/v7 box decoding to xywh in input pixels; grids follow each input's shape."""
        out = []
        for i, p in enumerate(maps):
            bs, _, ny, nx, _ = p.shape
            gy, gx = torch.meshgrid(
                torch.arange(ny, device=p.device, dtype=p.dtype),
                torch.arange(nx, device=p.device, dtype=p.dtype),
                indexing="ij",
            )
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2) - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
            y = p.sigmoid()
            xy, wh, obj, cls = y[..., :2], y[..., 2:4], y[..., 4:5], y[..., 5:]
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, obj * cls), 4).view(bs, -1, 4 + self.nc))
        return torch.cat(out, 1).transpose(1, 2)


_BLOCKS: dict[str, type[nn.Module]] = {"Conv": Conv, "C3": C3, "SPPF": SPPF}


class ReleaseModel(nn.Module):
    """A yolov5 v6 network built from its `model.yaml` dict; parameter names match the release checkpoints.

    Layers run in order and read their inputs by each layer's `f` (from) index, as yolov5 does, with
    plain torch ops only, so Torch-Pruning can trace it.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.yaml = dict(cfg)
        layers, self.save = _parse(self.yaml)
        self.model = nn.Sequential(*layers)
        self.names: dict[int, str] = dict(enumerate(cfg.get("names", [])))
        self.register_buffer("stride", torch.zeros(0), persistent=False)

    @property
    def head(self) -> AnchorDetect:
        return self.model[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x


def _parse(cfg: dict[str, Any]) -> tuple[list[nn.Module], set[int]]:
    """yolov5's parse_model for the blocks of v6 release models (Conv, C3, SPPF, Concat, nn.Upsample, Detect).

    Ultralytics' parse_model is not used: it maps these names onto its current blocks (anchor-free
    Detect, an SPPF without cv1's activation), which release weights do not fit.
    """
    nc, gd, gw = int(cfg["nc"]), float(cfg["depth_multiple"]), float(cfg["width_multiple"])
    ch = [int(cfg.get("ch", 3))]
    layers: list[nn.Module] = []
    save: set[int] = set()
    symbols = {"nc": nc, "anchors": cfg.get("anchors"), "None": None}  # the names yolov5 eval()s in args
    for i, (f, repeats, name, yaml_args) in enumerate(cfg["backbone"] + cfg["head"]):
        args = [symbols.get(a, a) if isinstance(a, str) else a for a in yaml_args]
        n = max(round(repeats * gd), 1) if repeats > 1 else repeats
        if name in _BLOCKS:
            c2 = make_divisible(args[0] * gw, 8)
            args = [ch[f], c2, *args[1:]]
            if name == "C3":  # repeats live inside C3
                args.insert(2, n)
                n = 1
            block: type[nn.Module] = _BLOCKS[name]
        elif name == "Concat":
            c2, block = sum(ch[j] for j in f), Concat
        elif name == "nn.Upsample":
            c2, block = ch[f], nn.Upsample
        elif name == "Detect":
            if not isinstance(args[1], list):
                raise ValueError("Detect needs explicit anchors (lists of w,h pairs) in the model config")
            args = [nc, args[1], [ch[j] for j in f]]
            c2, block = 0, AnchorDetect
        else:
            raise ValueError(f"layer {i}: module {name!r} is not a yolov5 v6 release block")
        layer = nn.Sequential(*(block(*args) for _ in range(n))) if n > 1 else block(*args)
        layer.i, layer.f = i, f
        save.update(j % i for j in ([f] if isinstance(f, int) else f) if j != -1)
        layers.append(layer)
        ch = [] if i == 0 else ch
        ch.append(c2)
    if not isinstance(layers[-1], AnchorDetect):
        raise ValueError("the model config must end in a Detect layer")
    return layers, save


def build_release_model(cfg: dict[str, Any]) -> ReleaseModel:
    """A fresh yolov5 release network for `cfg` (a release `model.yaml` dict), in eval mode.

    Strides come from one probe pass; anchors and head biases are set up as yolov5 does for new models.
    """
    model = ReleaseModel(cfg)
    initialize_weights(model)  # BatchNorm eps 1e-3 / momentum 0.03: state dicts do not carry them
    head = model.head
    model.eval()
    head.train()  # the head alone in training mode returns its raw maps, whose sizes give the strides
    with torch.no_grad():
        size = 256
        maps = model(torch.zeros(1, int(cfg.get("ch", 3)), size, size))
        head.stride = torch.tensor([size / p.shape[2] for p in maps])
        head.anchors /= head.stride.view(-1, 1, 1)
        for conv, s in zip(head.m, head.stride.tolist(), strict=True):
            b = conv.bias.view(head.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)  # objectness prior: ~8 objects per 640 image
            b[:, 5:] += math.log(0.6 / (head.nc - 0.99999))
    model.stride = head.stride.clone()
    return model.eval()


def _pickle_globals(path: Path) -> set[tuple[str, str]]:
    """The (module, name) globals a torch zip checkpoint's pickle references, read without executing it.

    The pickle is the one torch.load unpickles: data.pkl in the folder of the archive's first entry.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        record = f"{names[0].split('/', 1)[0]}/data.pkl" if names else ""
        if names.count(record) != 1:  # a second copy could be the one torch reads
            raise ValueError(f"{path} is a zip file but not a torch checkpoint (no single data.pkl)")
        data = archive.read(record)
    try:
        return {tuple(arg.split(" ", 1)) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    except ValueError as e:
        raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from None


def is_release_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a torch checkpoint pickling a yolov5 model (v6 `Model`, v7 `DetectionModel`).

    Nothing is unpickled: only the pickle's global names are read.
    """
    try:
        return bool(_MODEL_CLASSES & _pickle_globals(Path(path)))
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def load_release_checkpoint(path: str | Path) -> LoadedModel:
    """Load a yolov5 release `.pt` (its EMA weights if present, else `model`) as float32 in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if not zipfile.is_zipfile(path):  # every release since torch 1.6 is a zip; the legacy format is not read
        raise ValueError(f"{path} is not a readable torch checkpoint: not a torch zip archive")
    found = _pickle_globals(path)
    refused = sorted(f"{module}.{name}" for module, name in found if not _is_release_global(module, name))
    if refused:  # checked before anything is unpickled
        listed = ", ".join(refused)
        raise ValueError(f"{path}: refusing to unpickle {listed}: outside the names a yolov5 release checkpoint uses")
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the backstop: a pickle the name check could not see through
        raise ValueError(f"{path} is not a yolov5 release checkpoint: torch's weights-only unpickler refused it") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from None
    stub = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if type(stub) not in {_STUBS[name] for name in _MODEL_CLASSES}:
        raise ValueError(f"{path} holds no yolov5 detection model under 'ema' or 'model'")
    try:
        cfg = dict(stub.yaml)
        names = stub.names
        cfg["names"] = [str(n) for n in (names.values() if isinstance(names, dict) else names)]
        model = build_release_model(cfg)
        state = {k: v.float() if v.is_floating_point() else v for k, v in stub.state_dict().items()}
        model.load_state_dict(state, strict=True)
    except (AttributeError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: the checkpoint does not fit the network its model.yaml describes: {e}") from None
    if not torch.equal(model.stride, stub.stride.float()):
        raise ValueError(f"{path}: stride {stub.stride.tolist()} differs from the rebuilt {model.stride.tolist()}")
    return LoadedModel(
        model=model, names=model.names, stride=int(model.stride.max()), source=str(path),
        arch={"family": YOLOV5_RELEASE, "cfg": cfg},
    )
