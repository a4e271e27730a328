"""PyTorch distributed set-up for `torchrun` (one process per GPU; multi-node the same way) and one-process runs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Each process then uses GPU LOCAL_RANK with the NCCL
backend when CUDA is usable, and the CPU with the gloo backend otherwise (or when device = cpu).
Without those variables the run is a single process on the device the user chose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lungddpm.runtime.device import resolve_device
from lungddpm.errors import DeviceError


@dataclass
class DistContext:
    """This process's place in the run: rank, number of processes, local GPU index, device, backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and previews."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.backend is not None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) set the distributed environment variables."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (NCCL on CUDA, else gloo), or set up a single process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=resolve_device(device))
    rank, world, local = (int(os.environ[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    wants_cpu = device.strip().lower() == "cpu"
    if torch.cuda.is_available() and not wants_cpu:
        if local >= torch.cuda.device_count():
            raise DeviceError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible; "
                              "start torchrun with --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local)
        ctx = DistContext(rank, world, local, torch.device("cuda", local), "nccl")
    elif device.strip().lower() not in ("auto", "cpu"):
        raise DeviceError(f"device {device!r} was requested but CUDA is not usable here; use device = auto or cpu")
    else:
        ctx = DistContext(rank, world, local, torch.device("cpu"), "gloo")
    dist.init_process_group(ctx.backend, rank=rank, world_size=world)
    return ctx


def sum_over_processes(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of a tensor over all processes, on this process's device (the tensor itself in a single process)."""
    if not ctx.distributed:
        return value
    total = value.detach().to(ctx.device, copy=True)
    dist.all_reduce(total)
    return total


def mean_over_processes(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of a tensor over all processes (the tensor itself in a single process)."""
    return sum_over_processes(value, ctx) / ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
