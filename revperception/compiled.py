"""Every level of a reversible model compiled once by OpenVINO; a switch selects a compiled level.

Each level is converted from its own architecture (its channels only, as `ReversibleModel.standalone` gives
it) and compiled at construction, with any batch and input height/width. A switch is one integer
assignment, read once per pass, exactly as in `ReversibleModel`: no compile, no disk load, no copy. Unlike the
torch backend, the compiled levels hold their own weights (what that costs: docs/inference-speed.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from revperception.export import BackendError, import_openvino, to_openvino
from revperception.precision import BF16, FP16, FP32, resolve
from revperception.pruning import PRUNED, Levels
from revperception.runtime import OPENVINO, LevelRunner, ReversibleModel

_HINTS = {FP32: "f32", BF16: "bf16", FP16: "f16"}


def compile_network(net: torch.nn.Module, imgsz: int, precision: str, device: str = "CPU") -> object:
    """`net` converted and compiled for `device` at `precision` (fp32/bf16/fp16); an error if the device would
    run another precision than the one asked for."""
    ov = import_openvino()
    core = ov.Core()
    hint = _HINTS[precision]
    try:
        compiled = core.compile_model(to_openvino(net, imgsz), device.upper(), {"INFERENCE_PRECISION_HINT": hint})
    except RuntimeError as err:  # OpenVINO nests "Exception from <file>:<line>" lines; the last one says why
        reason = [line for line in str(err).splitlines() if line.strip() and not line.startswith("Exception from")]
        raise BackendError(f"OpenVINO could not compile for device {device!r} at {precision}: "
                           f"{reason[-1] if reason else err} (devices here: {', '.join(core.available_devices)})"
                           ) from err
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")
    if actual != getattr(ov.Type, hint):
        raise BackendError(f"OpenVINO on {device} runs {actual}, not the {precision} asked for; choose another "
                           f"precision")
    return compiled


class CompiledLevels(LevelRunner):
    """The levels of `model` compiled by OpenVINO, switched like `ReversibleModel`.

    The torch model is only read (each level copied out of it); drop it afterwards to free its weights.
    """

    backend = OPENVINO

    def __init__(self, model: ReversibleModel, sizes: Sequence[int], *, precision: str = FP32, device: str = "CPU",
                 start_level: str = PRUNED) -> None:
        self.levels: Levels = model.levels
        self.precision = resolve(precision, device)
        self.device = device
        self._compiled = [compile_network(model.standalone(name), size, self.precision, device)
                          for name, size in zip(self.levels.names, sizes, strict=True)]
        self._requests = [compiled.create_infer_request() for compiled in self._compiled]
        self._requested = self.levels.index(start_level)
        self._lock = threading.Lock()

    def run(self, x: torch.Tensor, index: int | None = None) -> tuple[torch.Tensor, str]:
        with self._lock:  # one infer request per level, used by one pass at a time
            index = self._requested if index is None else index
            out = self._requests[index].infer({0: np.ascontiguousarray(x.detach().cpu().numpy())})[0]
            return torch.from_numpy(np.array(out, copy=True)), self.levels.names[index]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]
