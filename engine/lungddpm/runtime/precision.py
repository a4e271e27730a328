"""Network precision during sampling: float32, or bfloat16/float16 autocast (the solver state stays float32)."""

from __future__ import annotations

import contextlib

import torch

from lungddpm.errors import ConfigError, DeviceError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context in which the U-Net runs at `precision` on `device` (fp32: no autocast)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not available; choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu" and precision == "fp16":
        raise DeviceError("float16 autocast is a GPU setting; on a CPU use --precision bf16 or fp32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision fp16 or fp32")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
