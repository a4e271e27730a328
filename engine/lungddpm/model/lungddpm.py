"""A Lung-DDPM model: the denoising U-Net, its diffusion schedule and its configuration."""

from __future__ import annotations

import torch
from torch import nn

from lungddpm.model.config import ModelConfig
from lungddpm.model.diffusion import Diffusion
from lungddpm.errors import InputError
from lungddpm.model.unet import UNet3D


class LungDDPM(nn.Module):
    """Denoiser (``denoise_fn``) + schedule (``diffusion``) built from a ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.denoise_fn = UNet3D(config)
        self.diffusion = Diffusion(config.timesteps)
        self.source = None  # CheckpointInfo when loaded from a file

    @property
    def device(self) -> torch.device:
        """The device holding the network's parameters."""
        return next(self.denoise_fn.parameters()).device

    def predict_noise(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                      attributes: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ for noisy images x_t (B,1,D,H,W), layout channels cond (B,C,D,H,W) in {−1, 1}, steps t (B,), attributes (B, A)."""
        self.check_inputs(x_t, cond)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise InputError(f"timesteps must have shape ({x_t.shape[0]},) to match the batch; got {tuple(t.shape)}")
        return self.denoise_fn(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t, attributes)

    def check_inputs(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        """Raise InputError when tensors do not fit this model's channels or spatial size."""
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.out_channels:
            raise InputError(f"image tensor must be (B, {c.out_channels}, D, H, W); got {tuple(x.shape)}")
        if cond.ndim != 5 or cond.shape[1] != c.cond_channels:
            raise InputError(
                f"layout tensor must be (B, {c.cond_channels}, D, H, W) for this model "
                f"({c.in_channels} input channels); got {tuple(cond.shape)}"
            )
        if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
            raise InputError(f"layout {tuple(cond.shape)} and image {tuple(x.shape)} differ in batch or spatial size")
        levels = len(c.channel_mult) - 1
        if any(s % (2**levels) for s in x.shape[2:]):
            raise InputError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {2**levels} for this network; "
                f"the model was trained at {c.image_size}³"
            )
