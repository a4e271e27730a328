"""How the network runs on a device: precision, attention implementation and memory layout.

``pick_fast_path`` is the default (``precision="auto"``): the fastest path measured to stay within
the README's bf16 tolerance (bench/engine_cpu.py; Testing/engine/evaluation/test_fidelity.py checks
the tolerance on this very path). ``RELEASED_PATH`` is the released code's (fp32, legacy attention,
contiguous tensors). ``running_on`` applies a path to a model for the duration of a run.
``auto_batch`` is how many samples share one network pass when nobody says: as many as fit in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lungddpm.errors import ConfigError
from lungddpm.model.config import ATTENTIONS, ModelConfig
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.model.unet import AttentionBlock
from lungddpm.runtime.precision import AUTO, resolve_precision

SDPA, LEGACY = ATTENTIONS
LAYOUTS = ("contiguous", "channels_last_3d")
# Peak activation memory of one sample in one inference pass, per model-grid voxel and base channel (num_channels):
# one fp32 pass of the released configurations peaked at 0.62 / 1.37 / 5.2 GB of host memory at 32³ / 64³ / 128³
# (README, Benchmarks), about 0.45 GB of it torch and the weights: 81 / 55 / 35 bytes. The rule takes 64, which covers
# 64³ and up with room (bf16 activations need less); a guided pass (attribute models, w ≠ 1) is two samples.
ACTIVATION_BYTES = 64
MEMORY_SHARE = 0.5  # of the memory available when sampling starts: the rest for the inputs, outputs and other programs
MEMINFO = "/proc/meminfo"
MAX_BATCH = 4  # samples per pass at most: the patch mode's cube batch (bench/gpu_check.sh measures 1 / 2 / 4)


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
    """The path for `device` at `precision` (auto: ``resolve_precision``), with that device's attention and layout.

    No path uses ``torch.compile``. On a CPU it does not pay (bench/compile_cpu.py, demo-sized U-Net on the bf16
    path, README "torch.compile on a CPU"): compiling took 98–143 s cold and 7–11 s from inductor's cache, and the
    compiled pass was slower at 64³ (min 6.5 s against eager's 3.5 s) and no faster at 32³, so no number of the
    default samplers' 3 / 10 passes earns the compile back. GPUs: measured by bench/gpu_check.sh before it is used.
    """
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


def sample_bytes(config: ModelConfig, guided: bool = False) -> int:
    """Peak activation bytes of one sample in one network pass: ACTIVATION_BYTES × num_channels × image_size³ (× 2 guided)."""
    return ACTIVATION_BYTES * config.num_channels * config.image_size**3 * (2 if guided else 1)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for sampling on `device`: a CUDA GPU's free memory, else the host's MemAvailable (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # Linux; elsewhere (macOS, Windows) unknown
        with open(MEMINFO, encoding="ascii") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        return None
    return None if kib is None else kib * 1024


def auto_batch(config: ModelConfig, device: torch.device, samples: int, guided: bool = False,
               available: int | None = None) -> int:
    """Samples per pass: of `samples`, as many as fit in MEMORY_SHARE of the free memory at sample_bytes each, 1..MAX_BATCH.

    ``available`` overrides the measured free memory (``available_bytes``); where it is unknown, 1.
    """
    free = available_bytes(device) if available is None else available
    if free is None:
        return 1
    return max(1, min(samples, MAX_BATCH, int(MEMORY_SHARE * free // sample_bytes(config, guided))))
