"""Training (Algorithm 1 of the paper) in one process: random t, L1 noise loss, Adam, accumulation, EMA.

Defaults reproduce the released trainer: Adam lr 1e-5, batch 1, gradient accumulation 2, EMA decay
0.995 updated every 10 steps from step 2000 (before that the EMA is a copy of the model).
The network is held as ``self.net`` so a distributed trainer can wrap it (DDP) without changing
the loss, the EMA or the checkpoint code.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lungddpm.model.checkpoints import save_checkpoint
from lungddpm.model.diffusion import Diffusion, noise_prediction_loss
from lungddpm.errors import ConfigError
from lungddpm.model.lungddpm import LungDDPM

Batch = tuple[torch.Tensor, torch.Tensor]  # (x_start (B,1,D,H,W) in [-1, 1], cond (B,C,D,H,W) in {-1, 1})


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the released trainer's."""

    lr: float = 1e-5
    grad_accum: int = 2
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    save_every: int = 1000
    steps: int = 100_000
    seed: int = 0
    output_dir: str = "runs/lungddpm"

    def __post_init__(self) -> None:
        if self.grad_accum < 1 or self.ema_every < 1 or self.save_every < 1 or self.steps < 0:
            raise ConfigError("grad_accum, ema_every and save_every must be ≥ 1 and steps ≥ 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay {self.ema_decay} must lie in [0, 1)")


def denoising_loss(
    net: nn.Module, diffusion: Diffusion, x_start: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Algorithm 1: t ~ U{0..T−1}, ε ~ N(0, I), loss = mean |ε − ε̂(q_sample(x_0, t, ε) ⊕ layout, t)|."""
    b = x_start.shape[0]
    gen_device = generator.device if generator is not None else x_start.device
    t = torch.randint(0, diffusion.num_timesteps, (b,), generator=generator, device=gen_device).to(x_start.device)
    noise = torch.randn(x_start.shape, generator=generator, device=gen_device).to(x_start.device)
    return loss_at(net, diffusion, x_start, cond, t, noise)


def loss_at(net: nn.Module, diffusion: Diffusion, x_start: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
            noise: torch.Tensor) -> torch.Tensor:
    """mean |ε − ε̂(q_sample(x_0, t, ε) ⊕ layout, t)| for given t and ε (the prediction compared in float32)."""
    x_t = diffusion.q_sample(x_start, t, noise)
    return noise_prediction_loss(net(torch.cat([x_t, cond], dim=1), t).float(), noise)


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


def refresh_ema(ema: nn.Module, net: nn.Module, step: int, config: TrainConfig) -> None:
    """Released EMA rule at a step: copy the model before ema_start, exponential average afterwards."""
    if step < config.ema_start:
        ema.load_state_dict(net.state_dict())
    else:
        ema_update(ema, net, config.ema_decay)


class Trainer:
    """Single-process trainer over an endless iterator of (x_start, cond) batches."""

    def __init__(self, model: LungDDPM, batches: Iterator[Batch], config: TrainConfig) -> None:
        self.model = model
        self.net: nn.Module = model.denoise_fn
        self.batches = batches
        self.config = config
        self.device = model.device
        self.ema = copy.deepcopy(model.denoise_fn).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.step = 0

    def train_step(self) -> float:
        """One optimiser step over grad_accum batches; returns the mean loss."""
        self.net.train()
        total = 0.0
        for _ in range(self.config.grad_accum):
            x_start, cond = (v.to(self.device) for v in next(self.batches))
            loss = denoising_loss(self.net, self.model.diffusion, x_start, cond, self.generator)
            (loss / self.config.grad_accum).backward()
            total += loss.item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step % self.config.ema_every == 0:
            self.update_ema()
        self.step += 1
        return total / self.config.grad_accum

    def update_ema(self) -> None:
        """Released EMA rule: copy the model before ema_start, exponential average afterwards."""
        refresh_ema(self.ema, self.net, self.step, self.config)

    def save(self, path: str | Path | None = None) -> Path:
        """Write model, EMA, optimiser and step in the project format (atomically)."""
        path = Path(path) if path is not None else Path(self.config.output_dir) / f"step-{self.step:07d}.pt"
        extra = {"optimizer": self.optimizer.state_dict(), "train_config": dict(vars(self.config))}
        return save_checkpoint(path, self.model, ema=self.ema, step=self.step, extra=extra)

    def fit(self, steps: int | None = None, log: Callable[[dict], None] | None = None) -> list[float]:
        """Train for steps (default config.steps), saving every save_every steps; returns the losses."""
        steps = self.config.steps if steps is None else steps
        losses = []
        start = time.perf_counter()
        for _ in range(steps):
            losses.append(self.train_step())
            if log is not None:
                log({"step": self.step, "loss": losses[-1], "elapsed_s": time.perf_counter() - start})
            if self.step % self.config.save_every == 0:
                self.save()
        self.net.eval()
        return losses
