"""How the network runs on a device: precision, attention implementation and memory layout.

``pick_fast_path`` is the default (``precision="auto"``): the fastest path measured to stay within
the README's bf16 tolerance (bench/engine_cpu.py; Testing/engine/evaluation/test_fidelity.py checks
the tolerance on this very path). ``RELEASED_PATH`` is the released code's (fp32, legacy attention,
contiguous tensors). ``running_on`` applies a path to a model for the duration of a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lungddpm.errors import ConfigError
from lungddpm.model.config import ATTENTIONS
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.model.unet import AttentionBlock
from lungddpm.runtime.precision import AUTO, resolve_precision

SDPA, LEGACY = ATTENTIONS
LAYOUTS = ("contiguous", "channels_last_3d")


@dataclass(frozen=True)
class FastPath:
    """One way to run the network: autocast precision, attention implementation, memory layout of the weights."""

    precision: str
    attention: str
    layout: str = LAYOUTS[0]

    def provenance(self) -> dict[str, str]:
        """The path as output metadata (precision, attention, memory_layout)."""
        return {"precision": self.precision, "attention": self.attention, "memory_layout": self.layout}


RELEASED_PATH = FastPath("fp32", LEGACY)
# CPU with native bf16 (AVX-512 BF16 / AMX): bf16 oneDNN convolutions want channels-last-3d weights (64³: 1.5–2×
# faster than contiguous bf16), and SDPA beat the einsum attention in bf16 at 32³, 64³ and 128³ (alternating
# passes on a 2-core Xeon with AMX, issue 16); the whole path: README, Speed (bench/engine_cpu.py)
BF16_CPU_PATH = FastPath("bf16", SDPA, LAYOUTS[1])


def pick_fast_path(device: torch.device, precision: str = AUTO) -> FastPath:
    """The path for `device` at `precision` (auto: ``resolve_precision``), with that device's attention and layout."""
    precision = resolve_precision(device, precision)
    if device.type == "cpu":  # fp32 on a CPU: the einsum attention is faster than SDPA
        return BF16_CPU_PATH if precision == "bf16" else FastPath(precision, LEGACY)
    # GPUs: fused attention (flash / memory-efficient kernels); auto stays fp32 until bench/gpu_check.sh measures bf16
    return FastPath(precision, SDPA)


def set_attention(model: LungDDPM, attention: str) -> None:
    """Switch every attention block of `model` to `attention` (sdpa or legacy; the same maths, other kernels)."""
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention {attention!r} must be one of {ATTENTIONS}")
    for block in model.modules():
        if isinstance(block, AttentionBlock):
            block.use_sdpa = attention == SDPA


@contextlib.contextmanager
def running_on(model: LungDDPM, path: FastPath) -> Iterator[LungDDPM]:
    """`model` with `path`'s attention and weight layout inside the block, as it was afterwards."""
    attention = model.config.attention
    set_attention(model, path.attention)
    if path.layout == LAYOUTS[1]:
        model.to(memory_format=torch.channels_last_3d)
    try:
        yield model
    finally:
        set_attention(model, attention)
        if path.layout == LAYOUTS[1]:
            model.to(memory_format=torch.contiguous_format)
