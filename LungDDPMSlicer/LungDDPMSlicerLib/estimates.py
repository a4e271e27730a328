"""Time and memory to expect for a model, device and number of variants, with warnings and the alternative.

Time = seconds per network pass x passes: all T of the model for ddpm, `steps` (default 3) for the
few-step solvers; a Lung-DDPM+ patch model runs those passes for every batch of up to 4 nodule cubes (on a
CPU a batch of k cubes costs k passes). The per-pass seconds and peak memory are in Resources/models.json
per model, measured on a 2-core x86 CPU (float32, `python bench/engine_cpu.py`; see each entry's
estimate_basis). GPU numbers were not measured in this project: GPU time is then reported as unknown and
GPU memory is an estimate.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

from .engine import DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS
from .models import ModelEntry

LONG_RUN_S = 3600.0
PATCH_PROFILES = ("released-patch", "native-patch")  # nodule-cube models; mirrors lungddpm.model.config.PATCH_PROFILES
PATCH_BATCH = 4  # cubes per network pass; mirrors lungddpm.model.fastpath.MAX_BATCH (checked in Testing/slicer)


@dataclass(frozen=True)
class Gpu:
    """A CUDA GPU as nvidia-smi reports it."""

    name: str
    memory_gb: float


@dataclass
class Estimate:
    """Expected device, time (None: unknown) and peak memory of a synthesis, plus warnings for the user."""

    device: str  # "cpu" or "cuda"
    seconds: float | None
    memory_gb: float
    warnings: list[str] = field(default_factory=list)
    basis: str = ""  # how the time was computed, e.g. "3 network passes × 48 s"

    def summary(self) -> str:
        """One line for the panel, e.g. "CPU: about 2 min (3 network passes × 48 s), peak RAM about 6.5 GB"."""
        where, memory = ("GPU", "GPU memory") if self.device == "cuda" else ("CPU", "RAM")
        time = "time not measured on GPUs" if self.seconds is None else f"about {format_duration(self.seconds)}"
        basis = f" ({self.basis})" if self.basis else ""
        return f"{where}: {time}{basis}, peak {memory} about {self.memory_gb:.1f} GB"


def format_duration(seconds: float) -> str:
    """A duration as '40 s', '12 min' or '3.9 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` output (MiB)."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip() and memory.strip().isdigit():
            gpus.append(Gpu(name.strip(), int(memory.strip()) / 1024))
    return gpus


def detect_gpus() -> list[Gpu]:
    """The CUDA GPUs of this machine (empty when nvidia-smi is absent or fails); does not import torch."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        result = subprocess.run([executable, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []


def system_memory_gb() -> float | None:
    """Total RAM in GB (psutil, else POSIX sysconf), or None when unknown."""
    try:
        import psutil

        return psutil.virtual_memory().total / 1024**3
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (AttributeError, ValueError, OSError):
        return None


def network_passes(timesteps: int, sampler: str, steps: int | None) -> int:
    """Network passes of one sample: all T for ddpm; `steps` (None: the engine's default 3), at most T, for solvers."""
    if sampler == "ddpm":
        return timesteps
    return min(steps or DEFAULT_SOLVER_STEPS, timesteps)


def cube_batches(nodules: int) -> int:
    """Batches of up to PATCH_BATCH nodule cubes that a patch model samples (at least one)."""
    return math.ceil(max(nodules, 1) / PATCH_BATCH)


def pass_cost(entry: ModelEntry, on_gpu: bool, nodules: int) -> tuple[float | None, str]:
    """Seconds of one sampling step and its wording; None when not measured on that device.

    A full-volume model runs one network pass per step. A patch model runs one pass per batch of up to
    PATCH_BATCH cubes: on a GPU a batch is taken to cost one pass (the cubes run in parallel; not measured),
    on a CPU a batch of k cubes costs k passes, so all `nodules` cubes cost `nodules` passes.
    """
    per_pass = entry.gpu_seconds_per_step if on_gpu else entry.cpu_seconds_per_step
    if entry.profile not in PATCH_PROFILES:
        return per_pass, "" if per_pass is None else f"{per_pass:g} s"
    count = max(nodules, 1)
    units, label = (cube_batches(count), "batch(es) of up to 4 cubes") if on_gpu else (count, "cube(s)")
    if per_pass is None:
        return None, f"{units} {label}"
    return per_pass * units, f"{units} {label} × {per_pass:g} s"


def apple_gpu_likely(system: str | None = None, machine: str | None = None) -> bool:
    """Whether this is an Apple-silicon Mac, where the engine's 'auto' picks the Apple GPU (MPS) (asked without torch)."""
    return (system or platform.system()) == "Darwin" and (machine or platform.machine()) == "arm64"


def estimate(entry: ModelEntry, device: str, variants: int, gpus: list[Gpu], ram_gb: float | None,
             demo: ModelEntry | None = None, *, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
             nodules: int = 1, apple_gpu: bool = False) -> Estimate:
    """What a synthesis of `variants` outputs with this model, sampler and steps on a device (auto/cuda/mps/cpu) costs.

    `nodules`: the nodule segments the user chose (patch models cut one cube per nodule; 1 if unknown).
    `apple_gpu`: an Apple-silicon Mac (apple_gpu_likely), where 'auto' without a CUDA GPU runs on MPS.
    """
    passes = network_passes(entry.timesteps, sampler, steps)
    warnings = []
    if device == "cuda" and not gpus:
        warnings.append("No CUDA GPU was detected: synthesis will fail on 'cuda'. Choose 'auto' or 'cpu'.")
    if device == "mps":
        warnings.append("Apple GPU (MPS): time and memory were not measured; figures below are for a CPU.")
    on_gpu = device in ("auto", "cuda") and bool(gpus)
    cpu_step, cpu_wording = pass_cost(entry, False, nodules)
    if on_gpu:
        gpu = max(gpus, key=lambda g: g.memory_gb)
        gpu_step, gpu_wording = pass_cost(entry, True, nodules)
        seconds = None if gpu_step is None else gpu_step * passes * variants
        basis = f"{passes} network passes" + (f" × {gpu_wording}" if gpu_wording else "")
        result = Estimate("cuda", seconds, entry.gpu_memory_gb, warnings, _per_variant(basis, variants))
        if gpu.memory_gb < entry.gpu_memory_gb:
            cpu_time = format_duration(cpu_step * passes * variants)
            warnings.append(f"{gpu.name} has {gpu.memory_gb:.0f} GB; {entry.title} needs about {entry.gpu_memory_gb:.0f} GB "
                            f"of GPU memory. Choose 'cpu' (about {cpu_time}) or a smaller model.")
        return result
    seconds = cpu_step * passes * variants
    result = Estimate("cpu", seconds, entry.cpu_memory_gb, warnings,
                      _per_variant(f"{passes} network passes × {cpu_wording}", variants))
    if device == "auto" and not gpus:
        warnings.append("No CUDA GPU was detected: 'auto' runs on the Apple GPU (MPS) when PyTorch offers it, else on "
                        "the CPU; MPS was not measured, the figures below are for a CPU." if apple_gpu else
                        "No CUDA GPU was detected: synthesis runs on the CPU.")
    if ram_gb is not None and ram_gb < entry.cpu_memory_gb:
        warnings.append(f"This computer has {ram_gb:.0f} GB of RAM; {entry.title} needs about {entry.cpu_memory_gb:.0f} GB "
                        f"on the CPU. Use a machine with a large GPU or more RAM.")
    if seconds > LONG_RUN_S:
        warnings.append(f"On a CPU this takes about {format_duration(seconds)}; use "
                        + ", or ".join(_alternatives(entry, variants, demo, sampler, steps, nodules)) + ".")
    return result


def _per_variant(basis: str, variants: int) -> str:
    """The basis of a time estimate, with the number of variants when there are several."""
    return basis if variants == 1 else f"{basis}, × {variants} variants"


def _alternatives(entry: ModelEntry, variants: int, demo: ModelEntry | None, sampler: str, steps: int | None,
                  nodules: int) -> list[str]:
    """What to do instead of a CPU run of hours: a GPU, the default fast sampler, the demo model."""
    options = ["a CUDA GPU"]
    if sampler == "ddpm":
        fast = pass_cost(entry, False, nodules)[0] * network_passes(entry.timesteps, DEFAULT_SAMPLER, None) * variants
        options.append(f"the {DEFAULT_SAMPLER} sampler with {DEFAULT_SOLVER_STEPS} steps (about {format_duration(fast)})")
    if demo is not None and demo.name != entry.name:
        quick = demo.cpu_seconds_per_step * network_passes(demo.timesteps, sampler, steps) * variants
        options.append(f"try the workflow first with {demo.title} (about {format_duration(quick)} on a CPU)")
    return options
