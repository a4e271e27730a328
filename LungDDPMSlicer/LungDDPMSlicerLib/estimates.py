"""Time and memory to expect for a model, device and number of variants, with warnings and the alternative.

The basis is in Resources/models.json per model: CPU seconds per sampling step and CPU peak memory were
measured on a 2-core x86 CPU (float32) — for the released 128³ network one step is one forward pass,
56 s there (project notes, "Measured here"). GPU numbers were not measured in this project: GPU time is
then reported as unknown and GPU memory is an estimate (see each entry's estimate_basis).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from .models import ModelEntry

LONG_RUN_S = 3600.0


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

    def summary(self) -> str:
        """One line for the panel, e.g. "CPU: about 3.9 h, peak RAM about 9.0 GB"."""
        where, memory = ("GPU", "GPU memory") if self.device == "cuda" else ("CPU", "RAM")
        time = "time not measured on GPUs" if self.seconds is None else f"about {format_duration(self.seconds)}"
        return f"{where}: {time}, peak {memory} about {self.memory_gb:.1f} GB"


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


def estimate(entry: ModelEntry, device: str, variants: int, gpus: list[Gpu], ram_gb: float | None,
             demo: ModelEntry | None = None) -> Estimate:
    """What a synthesis of `variants` outputs with this model on the chosen device (auto/cuda/mps/cpu) costs."""
    steps = entry.timesteps * variants
    warnings = []
    if device == "cuda" and not gpus:
        warnings.append("No CUDA GPU was detected: synthesis will fail on 'cuda'. Choose 'auto' or 'cpu'.")
    if device == "mps":
        warnings.append("Apple GPU (MPS): time and memory were not measured; figures below are for a CPU.")
    on_gpu = device in ("auto", "cuda") and bool(gpus)
    if on_gpu:
        gpu = max(gpus, key=lambda g: g.memory_gb)
        seconds = None if entry.gpu_seconds_per_step is None else entry.gpu_seconds_per_step * steps
        result = Estimate("cuda", seconds, entry.gpu_memory_gb, warnings)
        if gpu.memory_gb < entry.gpu_memory_gb:
            cpu_time = format_duration(entry.cpu_seconds_per_step * steps)
            warnings.append(f"{gpu.name} has {gpu.memory_gb:.0f} GB; {entry.title} needs about {entry.gpu_memory_gb:.0f} GB "
                            f"of GPU memory. Choose 'cpu' (about {cpu_time}) or a smaller model.")
        return result
    seconds = entry.cpu_seconds_per_step * steps
    result = Estimate("cpu", seconds, entry.cpu_memory_gb, warnings)
    if device == "auto" and not gpus:
        warnings.append("No CUDA GPU was detected: synthesis runs on the CPU.")
    if ram_gb is not None and ram_gb < entry.cpu_memory_gb:
        warnings.append(f"This computer has {ram_gb:.0f} GB of RAM; {entry.title} needs about {entry.cpu_memory_gb:.0f} GB "
                        f"on the CPU. Use a machine with a large GPU or more RAM.")
    if seconds > LONG_RUN_S:
        alternative = "a CUDA GPU"
        if demo is not None and demo.name != entry.name:
            alternative += f", or try the workflow first with {demo.title} (about " \
                           f"{format_duration(demo.cpu_seconds_per_step * demo.timesteps * variants)} on a CPU)"
        warnings.append(f"On a CPU this takes about {format_duration(seconds)}; use {alternative}.")
    return result
