"""The training objective (Alg. 1 of the paper) and the EMA of the weights, as the one trainer (training.run) uses them.

Alg. 1: draw t ~ U{0 … T−1} and ε ~ N(0, I) per sample, noise x_0 to x_t with the forward process
(eq. 2), predict ε̂ from x_t and the layout, and minimise the L1 loss |ε − ε̂| (eq. 7). Here t and ε
come from (seed, sample position) (``position_noise``), so that runs with different process counts
see the same draws. The EMA follows the released rule: a copy of the model before ``ema_start``, an
exponential average with ``ema_decay`` afterwards. Condition dropout (classifier-free guidance, Ho &
Salimans 2022): an attribute model sees a sample's attributes replaced by "unknown" with probability p,
drawn from (seed, position) too (``drop_attributes``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lungddpm.model.conditioning import unknown_vector
from lungddpm.model.diffusion import Diffusion, noise_prediction_loss


DROPOUT_STREAM = 1  # the condition-dropout draws' stream, apart from position_noise's (seed, position)


def loss_at(net: nn.Module, diffusion: Diffusion, x_start: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
            noise: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
    """Alg. 1 for given t and ε: mean |ε − ε̂(q_sample(x_0, t, ε) ⊕ layout, t, attributes)| (compared in float32)."""
    x_t = diffusion.q_sample(x_start, t, noise)
    return noise_prediction_loss(net(torch.cat([x_t, cond], dim=1), t, attributes).float(), noise)


def drop_attributes(seed: int, positions: torch.Tensor, attributes: torch.Tensor, p: float) -> torch.Tensor:
    """Condition dropout: each sample's attributes (B, A) all set unknown (NaN) with probability p, drawn from (seed, position)."""
    u = torch.tensor([np.random.default_rng(np.random.SeedSequence([seed, int(q), DROPOUT_STREAM])).random()
                      for q in positions.tolist()])
    return torch.where((u < p)[:, None], unknown_vector(attributes), attributes)


def position_noise(seed: int, positions: torch.Tensor, shape: tuple[int, ...], num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t (B,), ε (B, *shape)) on the CPU, each sample's drawn from a generator seeded by (seed, its position).

    The draws of a sample do not depend on the batch it is in or on the process that handles it, so
    runs with different process counts but the same global batch see the same t and ε.
    """
    ts, noises = [], []
    for p in positions.tolist():
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(p)]).generate_state(1)[0]))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · net for parameters; buffers copied."""
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def refresh_ema(ema: nn.Module, net: nn.Module, step: int, ema_start: int, decay: float) -> None:
    """Released EMA rule at a step: copy the model before ema_start, exponential average afterwards."""
    if step < ema_start:
        ema.load_state_dict(net.state_dict())
    else:
        ema_update(ema, net, decay)
