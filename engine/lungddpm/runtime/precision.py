"""Network precision during sampling: float32, or bfloat16/float16 autocast (the solver state stays float32).

torch is imported on use, so that the command line can offer PRECISION_CHOICES without torch installed.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lungddpm.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
AUTO = "auto"  # the device's fastest measured path (model.fastpath.pick_fast_path)
PRECISION_CHOICES = (AUTO, *PRECISIONS)
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: AVX-512 BF16 dot products, AMX tiles
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_has_native_bf16(cpuinfo: str = CPUINFO) -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (a NATIVE_BF16_FLAGS flag; False where unreadable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a request runs at: auto is bf16 on a CPU with native bf16 and fp32 elsewhere (measured: README)."""
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"precision {precision!r} is not available; choose one of {PRECISION_CHOICES}")
    return precision if precision != AUTO else auto_precision(device.type)


def auto_precision(device_type: str) -> str:
    """What auto runs on a device type ('cpu', 'cuda', 'mps'): bf16 on a CPU with native bf16, else fp32 (torch-free)."""
    return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context in which the U-Net runs at `precision` (auto: resolve_precision) on `device` (fp32: no autocast)."""
    import torch

    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu" and precision == "fp16":
        raise DeviceError("float16 autocast is a GPU setting; on a CPU use --precision bf16 or fp32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision fp16 or fp32")
    return torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
