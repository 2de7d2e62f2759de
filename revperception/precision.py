"""Numeric precision of inference: the names users give, and what `auto` resolves to on a device.

`auto` is the fastest precision the device runs natively: fp16 on CUDA, bf16 on a CPU with AMX tiles, fp32
elsewhere. A CPU with AVX512-BF16 but no AMX converts bf16 in software around each kernel, which measured
slower than fp32 with both torch and OpenVINO (docs/inference-speed.md), so `auto` does not pick it there;
`bf16` asked for by name still runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

FP32, BF16, FP16, AUTO = "fp32", "bf16", "fp16", "auto"
PRECISIONS = (FP32, BF16, FP16, AUTO)
DTYPES = {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}


def cpu_has_amx() -> bool:
    """True when this CPU has AMX bf16 tiles (Sapphire Rapids and later)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return bool(torch.cpu._is_amx_tile_supported())
    return "amx_bf16" in flags


def resolve(precision: str, device: str | torch.device = "cpu") -> str:
    """The concrete precision (fp32, bf16 or fp16) that `precision` means on `device` (a torch device name; an
    OpenVINO device other than GPU counts as a CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    cuda = str(device).lower().startswith(("cuda", "gpu"))
    if precision == AUTO:
        return FP16 if cuda else (BF16 if cpu_has_amx() else FP32)
    return precision
