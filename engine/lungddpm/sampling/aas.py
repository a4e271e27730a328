"""Anatomically aware sampling (AAS, Jiang et al. 2025, Alg. 2): the equations every sampler calls after its step.

A sampler denoises the whole volume (eq. 4 for the ancestral sampler, a solver step otherwise); AAS
then replaces the background (outside lung and nodule) by the reference CT noised to the level of the
new sample (eq. 5) and blends the two (eq. 6), so the anatomy outside the lungs stays real. Two
variants of the ancestral sampler differ only in that noise level:

- ``released``: step t (which produces x_{t−1}) pastes the reference noised to ᾱ_t, the level of the
  step's *input*, as the released script does; its output's background is never exactly the reference;
- ``paper`` (default; eq. 5): the reference is noised to ᾱ_{t−1}, the level of the step's *output*, so
  the last step pastes the exact reference.
"""

from __future__ import annotations

import torch

from lungddpm.errors import InputError
from lungddpm.model.diffusion import Diffusion, extract, forward_process
from lungddpm.model.lungddpm import LungDDPM


def background_mask(cond: torch.Tensor) -> torch.Tensor:
    """m_e of eq. 6 (= 1 − m_l): voxels where every layout channel is exactly −1 (outside lung and nodule), (B, 1, ...)."""
    return (cond == -1).all(dim=1, keepdim=True)


def reference_level(diffusion: Diffusion, t: torch.Tensor, variant: str, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(ᾱ), sqrt(1 − ᾱ)) that ancestral step t pastes the reference at: ᾱ_{t−1} (paper) or ᾱ_t (released)."""
    if variant == "released":
        return extract(diffusion.sqrt_alphas_cumprod, t, ndim), extract(diffusion.sqrt_one_minus_alphas_cumprod, t, ndim)
    alpha_bar = extract(diffusion.alphas_cumprod_prev, t, ndim)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def noised_reference(x_ref: torch.Tensor, sqrt_alpha_bar: torch.Tensor | float, sqrt_one_minus_alpha_bar: torch.Tensor | float,
                     e: torch.Tensor) -> torch.Tensor:
    """Eq. 5: the reference brought to the noise level of the new sample, sqrt(ᾱ) x_ref + sqrt(1 − ᾱ) e (eq. 2 on x_ref)."""
    return forward_process(x_ref, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, e)


def blend(x: torch.Tensor, x_ref_t: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Eq. 6: m_e ⊙ x_ref,t + (1 − m_e) ⊙ x, the noised reference outside the layout and the sample inside it."""
    return torch.where(background, x_ref_t, x)


def aas_inputs(model: LungDDPM, cond: torch.Tensor, x_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, x_ref, background) on the model's device in float32, after checking that they fit the model and are finite."""
    model.check_inputs(x_ref, cond)
    if not torch.isfinite(x_ref).all():
        raise InputError("the reference tensor holds NaN or infinite values; check the reference CT")
    cond = cond.to(model.device, torch.float32)
    return cond, x_ref.to(model.device, torch.float32), background_mask(cond)
