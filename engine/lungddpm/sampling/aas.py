"""Anatomically aware sampling (AAS): the background mask and the noised reference pasted after each step."""

from __future__ import annotations

import torch

from lungddpm.model.lungddpm import LungDDPM

VARIANTS = ("paper", "released")


def background_mask(cond: torch.Tensor) -> torch.Tensor:
    """Voxels where every layout channel is exactly −1 (outside lung and nodule), shape (B, 1, ...)."""
    return (cond == -1).all(dim=1, keepdim=True)


def noised_reference(model: LungDDPM, x_ref: torch.Tensor, t: torch.Tensor, e: torch.Tensor, variant: str) -> torch.Tensor:
    """The reference at the noise level AAS pastes after step t (ᾱ_t if released, ᾱ_{t−1} if paper)."""
    if variant == "released":
        return model.diffusion.q_sample(x_ref, t, e)
    return model.diffusion.q_sample_prev(x_ref, t, e)
