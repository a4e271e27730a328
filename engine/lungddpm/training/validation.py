"""Validation loss: the prepared data's validation split at fixed t and ε, the same in every run and process count.

Validation case c gets ``count`` timesteps t_j = ⌊T (j + ½) / count⌋, j = 0 … count − 1, and noises ε_j drawn
from a generator seeded by (VALIDATION_SEED, crc32(case id), j). The draws depend neither on the run's seed
nor on the process count nor on the order of the cases, so validation losses of different runs on the same
split compare directly. The loss is Alg. 1's (eq. 2 then the L1 loss of eq. 7) at those (t, ε), averaged over
cases and timesteps; processes take every world_size-th case and their sums are added up. An attribute
model is scored with each case's own attributes (no condition dropout).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn

from lungddpm.model.diffusion import Diffusion
from lungddpm.runtime.precision import autocast
from lungddpm.training.data import PreparedCases
from lungddpm.training.distributed import DistContext, sum_over_processes
from lungddpm.training.objective import loss_at

VALIDATION_SPLIT = "validation"  # the split name `lungddpm prepare` writes
VALIDATION_SEED = 7  # fixed, apart from any run's seed: every run sees the same validation noise


def validation_timesteps(num_timesteps: int, count: int) -> torch.Tensor:
    """The count fixed timesteps ⌊T (j + ½) / count⌋ (int64, spread over 0 … T − 1)."""
    return torch.tensor([int(num_timesteps * (j + 0.5) / count) for j in range(count)], dtype=torch.int64)


def validation_noise(case_id: str, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The count noises ε_j (count, *shape) of a validation case, seeded by (VALIDATION_SEED, crc32(case id), j)."""
    key = zlib.crc32(case_id.encode())
    noises = []
    for j in range(count):
        seed = int(np.random.SeedSequence([VALIDATION_SEED, key, j]).generate_state(1)[0])
        noises.append(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(noises)


@torch.no_grad()
def validation_loss(net: nn.Module, diffusion: Diffusion, cases: PreparedCases, count: int, ctx: DistContext,
                    precision: str = "fp32", batch_size: int = 1) -> float:
    """The mean loss over every validation case and its count fixed (t, ε); the same value in every process."""
    was_training = net.training
    net.eval()
    timesteps = validation_timesteps(diffusion.num_timesteps, count)
    total = torch.zeros((), dtype=torch.float64)
    for index in range(ctx.rank, len(cases), ctx.world_size):
        x, cond, attributes, _ = cases[(index, 0)]
        noise = validation_noise(cases.cases[index].case_id, count, tuple(x.shape))
        for first in range(0, count, batch_size):
            n = min(batch_size, count - first)
            batch = [v[None].expand(n, *v.shape).to(ctx.device) for v in (x, cond)]
            attrs = attributes[None].expand(n, *attributes.shape).to(ctx.device) if cases.schema else None
            with autocast(ctx.device, precision):
                loss = loss_at(net, diffusion, *batch, timesteps[first:first + n].to(ctx.device),
                               noise[first:first + n].to(ctx.device), attrs)
            total += float(loss) * n
    net.train(was_training)
    return float(sum_over_processes(total, ctx)) / (len(cases) * count)
