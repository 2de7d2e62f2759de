"""ReversibleModel: one set of shared weights, several nested architectures, switched in place.

After `permute_to_prefix`, every level keeps a prefix of each conv's filters (and, per concat
segment, of its inputs). So each prunable Conv2d/BatchNorm2d is replaced by a sliced twin that holds
the same Parameters and, per level, views of them: switching a level is one integer assignment, read
once at the start of each forward pass. Nothing is copied, re-allocated or loaded; a switch requested
during an inference takes effect at the next one, and no pass can see two levels.

A level may also own a little state of its own (`private`: any BatchNorm term, conv bias or conv weight by
state-dict name), so that making a pruned level accurate never moves what the full level computes; the full
level reads none of it. Folded, a level's own BatchNorm shift replaces the shared bias at no cost, while its
own scale costs one more pass over the conv's output (the pipeline therefore trains shifts only).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

from revperception.precision import DTYPES, FP16, FP32, resolve
from revperception.pruning import PRUNED, ChannelGroup, Levels

TORCH, OPENVINO = "torch", "openvino"
BACKENDS = (TORCH, OPENVINO)

Run = tuple[int, int]  # (start, length) along one tensor dimension


class _LevelState:
    """The level index the running forward pass uses; shared by every sliced module of one model."""

    def __init__(self) -> None:
        self.current = 0


def _runs(spans: list[Run]) -> tuple[Run, ...]:
    """Sorted spans with adjacent ones merged, so a full dimension is a single run."""
    merged: list[list[int]] = []
    for start, length in sorted(s for s in spans if s[1] > 0):
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1][1] += length
        else:
            merged.append([start, length])
    return tuple((s, n) for s, n in merged)


def _take(tensor: torch.Tensor, dim: int, runs: tuple[Run, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A view for one run; for several (a concat consumer), the views to join at call time."""
    if len(runs) == 1:
        return tensor.narrow(dim, *runs[0])
    return tuple(tensor.narrow(dim, s, n) for s, n in runs)


@dataclass(frozen=True)
class Own:
    """What one level owns of one conv, full-sized (None: the shared tensor): its weight, its output scale
    relative to the shared fold, its bias."""

    weight: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.scale, self.bias) if t is not None]


class SlicedConv2d(nn.Module):
    """A Conv2d whose filters and input channels are a per-level slice of the shared weight (or of the level's
    own weight, `own[i]`), with the level's own output scale and bias where it has them."""

    def __init__(self, conv: nn.Conv2d, out_runs: Sequence[tuple[Run, ...]], in_runs: Sequence[tuple[Run, ...]],
                 state: _LevelState, own: Sequence[Own] | None = None) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self._state = state
        self._plans = []
        for i, (out, inp) in enumerate(zip(out_runs, in_runs, strict=True)):
            (o_start, o_len), = out
            mine = own[i] if own else Own()
            weight = self.weight if mine.weight is None else mine.weight
            weight = _take(weight.narrow(0, o_start, o_len), 1, inp)
            bias = self.bias if mine.bias is None else mine.bias
            bias = None if bias is None else bias.narrow(0, o_start, o_len)
            scale = None if mine.scale is None else mine.scale.narrow(0, o_start, o_len).view(1, -1, 1, 1)
            self._plans.append((weight, bias, scale))
        tensors = {id(t): t for mine in own or () for t in mine.tensors()}
        for i, tensor in enumerate(tensors.values()):  # buffers, so memory accounting sees a level's own tensors
            self.register_buffer(f"own{i}", tensor, persistent=False)

    def parameter_count(self, index: int) -> int:
        weight, bias, _ = self._plans[index]
        parts = weight if isinstance(weight, tuple) else (weight,)
        return sum(t.numel() for t in parts) + (0 if bias is None else bias.numel())

    def standalone(self, index: int) -> nn.Conv2d:
        """Level `index` of this conv as a plain Conv2d holding copies of its slices (own scale folded in)."""
        weight, bias, scale = self._plans[index]
        weight = torch.cat(weight, dim=1) if isinstance(weight, tuple) else weight
        if scale is not None:
            weight = weight * scale.view(-1, 1, 1, 1)
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), self.stride, self.padding,
                         self.dilation, bias=bias is not None)
        conv.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=False)
        if bias is not None:
            conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, scale = self._plans[self._state.current]
        if isinstance(weight, tuple):
            weight = torch.cat(weight, dim=1)
        if scale is None:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)
        out = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)
        return torch.addcmul(bias.view(1, -1, 1, 1), out, scale)


class SlicedBatchNorm2d(nn.Module):
    """An inference BatchNorm2d over a per-level prefix of its channels; a level may bring its own statistics
    and affine terms (`private[i]`: any of weight, bias, running_mean, running_var)."""

    def __init__(self, bn: nn.BatchNorm2d, runs: Sequence[tuple[Run, ...]], state: _LevelState,
                 private: Sequence[dict[str, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self._state = state
        shared = {"running_mean": self.running_mean, "running_var": self.running_var, "weight": self.weight,
                  "bias": self.bias}
        own = private or [{} for _ in runs]
        self._plans = [
            tuple(own[i].get(key, shared[key]).narrow(0, *run) for key in shared)
            for i, (run,) in enumerate(runs)
        ]

    def parameter_count(self, index: int) -> int:
        _, _, weight, bias = self._plans[index]
        return weight.numel() + bias.numel()

    def standalone(self, index: int) -> nn.BatchNorm2d:
        """Level `index` of this BatchNorm as a plain BatchNorm2d holding copies of its slices."""
        mean, var, weight, bias = (t.detach().clone() for t in self._plans[index])
        bn = nn.BatchNorm2d(len(mean), eps=self.eps).eval()
        bn.running_mean, bn.running_var = mean, var
        bn.weight, bn.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
        return bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, weight, bias = self._plans[self._state.current]
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)


def _folded(bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None,
            own: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (scale, bias) a BatchNorm applies to its conv's output, read from `own` where it has the term."""
    weight, bias, mean, var = (own.get(key, getattr(bn, key)) for key in ("weight", "bias", "running_mean",
                                                                             "running_var"))
    scale = weight / torch.sqrt(var + bn.eps)
    shift = bias - mean * scale
    return scale, shift if conv_bias is None else shift + conv_bias * scale


_BN_TERMS = ("weight", "bias", "running_mean", "running_var")


@torch.no_grad()
def fuse_batchnorms(model: nn.Module, private: Sequence[dict[str, torch.Tensor]] = ()) -> dict[str, list[Own]]:
    """Fold each Conv block's BatchNorm into its conv, in place (the conv weight keeps its storage).

    `private` holds, per level, that level's own tensors by state-dict name. The shared weight is folded
    with the model's own BatchNorm. A level that owns the conv's weight gets it folded with its own BatchNorm
    terms; one that owns only BatchNorm terms gets its output scale relative to the shared fold and its own
    bias. Returns what each level owns per conv name (head convs without BatchNorm included).
    """
    owned = own_convs(model, private)
    for name, block in model.named_modules():
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        prefix = f"{name}." if name else ""
        scale, bias = _folded(bn, conv.bias, {})
        levels = []
        for own in private:
            terms = {k: own[f"{prefix}bn.{k}"] for k in _BN_TERMS if f"{prefix}bn.{k}" in own}
            weight = own.get(f"{prefix}conv.weight")
            if not terms and weight is None:
                levels.append(Own())
                continue
            level_scale, level_bias = _folded(bn, conv.bias, terms) if terms else (scale, bias)
            if weight is None:
                same = torch.equal(level_scale, scale)  # a level that owns only a shift costs no pass of its own
                levels.append(Own(scale=None if same else level_scale / scale, bias=level_bias))
            else:
                levels.append(Own(weight=weight * level_scale.view(-1, 1, 1, 1), bias=level_bias))
        if any(level.tensors() for level in levels):
            owned[f"{prefix}conv"] = levels
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias, requires_grad=False)
        block.bn = nn.Identity()
    return owned


def own_convs(model: nn.Module, private: Sequence[dict[str, torch.Tensor]]) -> dict[str, list[Own]]:
    """Per conv name, the weights and biases the levels own of it, as they are (no BatchNorm folded in)."""
    owned = {}
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            levels = [Own(weight=own.get(f"{name}.weight"), bias=own.get(f"{name}.bias")) for own in private]
            if any(level.tensors() for level in levels):
                owned[name] = levels
    return owned


def _float_inputs(_: nn.Module, args: tuple) -> tuple:
    return tuple([t.float() for t in a] if isinstance(a, (list, tuple)) else a.float() for a in args)


def reduce_precision(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast `model` to `dtype` in place, but for its detection heads: their box decoding multiplies grid offsets
    by strides, and bf16's 8-bit mantissa would round box corners to whole pixels (and coarser past 256)."""
    model.to(dtype)
    for head in (m for m in model.modules() if hasattr(m, "nl") and hasattr(m, "stride")):
        head.float()
        head.register_forward_pre_hook(_float_inputs)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class LevelRunner:
    """Runs a reversible model's levels (`ReversibleModel`: torch; `CompiledLevels`: OpenVINO) behind the switch
    both share: one assignment of the requested level's index, read once at the start of each pass, so a switch
    requested during a pass takes effect at the next one."""

    backend: str
    precision: str
    levels: Levels
    _requested: int

    @property
    def level(self) -> str:
        """The level the next pass will run."""
        return self.levels.names[self._requested]

    def set_level(self, name: str) -> None:
        """Switch architecture: one assignment, no I/O, no allocation, no compile; effective from the next pass."""
        self._requested = self.levels.index(name)

    def requested(self) -> int:
        """The index of the level requested now: read once by a caller that prepares a pass for that level."""
        return self._requested

    def run(self, x: torch.Tensor, index: int | None = None) -> tuple[torch.Tensor, str]:
        """One pass at level `index` (default: the requested one): the raw head output and that level's name."""
        raise NotImplementedError


class ReversibleModel(nn.Module, LevelRunner):
    """A detection network that runs any of its nested levels on one set of weights.

    It takes over `model`: BatchNorms are folded and prunable layers replaced in place, so the caller's
    module becomes the reversible one (no copy of the weights is ever made).
    """

    backend = TORCH

    @torch.no_grad()
    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], levels: Levels, *, fuse: bool = True,
                 channels_last: bool = True, start_level: str = PRUNED, device: str | torch.device = "cpu",
                 private: dict[str, dict[str, torch.Tensor]] | None = None, precision: str = FP32) -> None:
        super().__init__()
        self.precision = resolve(precision, device)
        if self.precision == FP16 and torch.device(device).type != "cuda":
            raise ValueError("precision fp16 runs on CUDA with the torch backend; on a CPU use bf16 or fp32, or "
                             "backend openvino")
        self.dtype = DTYPES[self.precision]
        model.to(device)  # before any view is taken: views must point at the weights that will run
        unknown = set(private or {}) - set(levels.names)
        if unknown:
            raise ValueError(f"private state for unknown levels {sorted(unknown)}; levels are {levels.names}")
        own = [{k: v.to(device) for k, v in (private or {}).get(name, {}).items()} for name in levels.names]
        owned = fuse_batchnorms(model, own) if fuse else own_convs(model, own)
        if self.dtype != torch.float32:  # one set of weights still: cast in place, once, before any view is taken
            reduce_precision(model, self.dtype)
            modules, dtypes = dict(model.named_modules()), {k: v.dtype for k, v in model.state_dict().items()}
            owned = {name: [Own(*(None if t is None else t.to(modules[name].weight.dtype)
                                  for t in (o.weight, o.scale, o.bias))) for o in levels]
                     for name, levels in owned.items()}
            own = [{k: v.to(dtypes.get(k, self.dtype)) for k, v in level.items()} for level in own]  # fused: gone
        self.channels_last = channels_last
        if channels_last:  # oneDNN runs NHWC without reordering every activation to its blocked layout and back
            for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
            owned = {name: [replace(o, weight=o.weight.contiguous(memory_format=torch.channels_last))
                            if o.weight is not None else o for o in levels] for name, levels in owned.items()}
        self.model = model.eval()
        self.levels = levels
        self._state = _LevelState()
        self._requested = levels.index(start_level)
        self._lock = threading.Lock()
        modules = dict(model.named_modules())
        spans: dict[tuple[str, str], list[list[Run]]] = {}
        for g, group in enumerate(groups):
            for member in group.members:
                per_level = spans.setdefault((member.module, member.kind), [[] for _ in levels.names])
                for i, name in enumerate(levels.names):
                    per_level[i].extend((offset, levels.keep[name][g]) for offset in member.offsets)
        for name in sorted({module for module, _ in spans}):
            module = modules[name]
            if isinstance(module, nn.Conv2d):
                whole_out = [((0, module.out_channels),)] * len(levels.names)  # detection outputs
                whole_in = [((0, module.in_channels),)] * len(levels.names)  # the image
                out = [_runs(s) for s in spans[(name, "out")]] if (name, "out") in spans else whole_out
                inp = [_runs(s) for s in spans[(name, "in")]] if (name, "in") in spans else whole_in
                _replace(model, name, SlicedConv2d(module, out, inp, self._state, owned.pop(name, None)))
            elif isinstance(module, nn.BatchNorm2d):
                terms = [{k.removeprefix(f"{name}."): v for k, v in level.items() if k.startswith(f"{name}.")}
                         for level in own]
                _replace(model, name, SlicedBatchNorm2d(module, [_runs(s) for s in spans[(name, "out")]],
                                                        self._state, terms))
        if owned:
            raise ValueError(f"private state for layers no level slices: {sorted(owned)}")

    def parameter_count(self, name: str) -> int:
        """Parameters a level actually uses: its slices of the sliced modules plus every other parameter."""
        index = self.levels.index(name)
        count = 0
        for module in self.model.modules():
            if isinstance(module, (SlicedConv2d, SlicedBatchNorm2d)):
                count += module.parameter_count(index)
            else:
                count += sum(p.numel() for p in module.parameters(recurse=False))
        return count

    def run(self, x: torch.Tensor, index: int | None = None) -> tuple[torch.Tensor, str]:
        """One forward pass at level `index` (default: the requested one); returns the raw head output and that
        level's name."""
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:  # passes are serialised, so the level a pass reads cannot change under it
            self._state.current = index = self._requested if index is None else index
            out = self.model(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).float(), self.levels.names[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    @torch.no_grad()
    def standalone(self, name: str) -> nn.Module:
        """Level `name` as a plain dense network of its own (its channels only, copied out of the shared weights):
        what an exporter or a compiler takes. The reversible model is left as it was."""
        index = self.levels.index(name)
        plain = {id(m): m.standalone(index) for m in self.model.modules()
                 if isinstance(m, (SlicedConv2d, SlicedBatchNorm2d))}
        return copy.deepcopy(self.model, memo=plain).eval()
