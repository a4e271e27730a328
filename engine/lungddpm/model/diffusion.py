"""Gaussian diffusion maths of Lung-DDPM: cosine schedule, forward process (eq. 2), reverse step (eq. 4), loss (eq. 7).

Buffer names and values match the released ``GaussianDiffusion`` (computed in float64, stored
float32), so a released checkpoint's schedule can be checked against ours key by key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_mean_coef3",
)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule as released: betas in float64, clipped to [0, 0.999]."""
    steps = timesteps + 1
    x = torch.linspace(0, steps, steps, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, 0.999)


def schedule_tensors(timesteps: int) -> dict[str, torch.Tensor]:
    """The 13 released schedule buffers for T = timesteps (float64 maths, float32 result)."""
    betas = cosine_betas(timesteps)
    alphas = 1 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    coef1 = betas * ac_prev.sqrt() / (1 - ac)
    coef2 = (1 - ac_prev) * alphas.sqrt() / (1 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": torch.log(1 - ac),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
        "posterior_mean_coef1": coef1,
        "posterior_mean_coef2": coef2,
        "posterior_mean_coef3": 1 - coef2,  # as released; multiplies a zero term, unused in sampling
    }
    return {k: values[k].float() for k in SCHEDULE_BUFFERS}


def forward_process(x_start: torch.Tensor, sqrt_alpha_bar: torch.Tensor | float,
                    sqrt_one_minus_alpha_bar: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (forward process): x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε, for per-sample tensors or plain numbers."""
    return sqrt_alpha_bar * x_start + sqrt_one_minus_alpha_bar * noise


def extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """a[t] reshaped to (B, 1, ..., 1) for broadcasting against an ndim-dimensional batch."""
    return a.gather(0, t).reshape(-1, *((1,) * (ndim - 1)))


class Diffusion(nn.Module):
    """The discrete-time forward/backward process with T steps and the released cosine schedule."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.num_timesteps = timesteps
        for name, value in schedule_tensors(timesteps).items():
            self.register_buffer(name, value)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 2, the forward process q(x_t | x_0) at timesteps t (B,)."""
        n = x_start.ndim
        return forward_process(x_start, extract(self.sqrt_alphas_cumprod, t, n), extract(self.sqrt_one_minus_alphas_cumprod, t, n),
                               noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂."""
        n = x_t.ndim
        return extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        n = x_t.ndim
        mean = extract(self.posterior_mean_coef1, t, n) * x_start + extract(self.posterior_mean_coef2, t, n) * x_t
        return mean, extract(self.posterior_log_variance_clipped, t, n)

    def p_mean_variance(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip_denoised: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t−1} | x_t) from predicted noise, x̂_0 clamped to [−1, 1]."""
        x_start = self.predict_start_from_noise(x_t, t, eps)
        if clip_denoised:
            x_start = x_start.clamp(-1.0, 1.0)
        return self.q_posterior(x_start, x_t, t)

    def p_sample(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Eq. 4, one ancestral (lung) step x_t -> x_{t−1} with posterior noise z (no noise where t = 0)."""
        mean, log_var = self.p_mean_variance(x_t, t, eps)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *((1,) * (x_t.ndim - 1)))
        return mean + nonzero * (0.5 * log_var).exp() * z


def noise_prediction_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eq. 7, the released training loss: mean |ε − ε̂| (L1)."""
    return F.l1_loss(eps_pred, noise)
