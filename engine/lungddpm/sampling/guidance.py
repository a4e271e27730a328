"""Classifier-free guidance (Ho & Salimans 2022): the noise prediction every sampler steps with.

A model conditioned on nodule attributes predicts ε_c for the requested attributes and ε_u for every
attribute unknown (the input its condition dropout trained); the guided prediction is
ε̃ = ε_u + w (ε_c − ε_u) (``classifier_free_guidance``). w = 1 is plain conditional sampling (one
pass); otherwise both passes go through the network as one batch of 2B. Guidance decides ε; AAS
(``sampling.aas``) then pastes the noised reference outside the synthesis region, as for any ε.
Without attributes the network runs exactly as before (one pass, no attribute input).
"""

from __future__ import annotations

import torch

from lungddpm.model.conditioning import unknown_vector
from lungddpm.model.lungddpm import LungDDPM


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Ho & Salimans 2022, eq. 6 (in ε form): ε̃ = ε_u + w (ε_c − ε_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_noise(model: LungDDPM, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                 attributes: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """ε̂ (float32) at x_t: plain without attributes, conditional at w = 1, else guided from one batched 2B pass."""
    if attributes is None:
        return model.predict_noise(x, cond, t).float()
    if scale == 1.0:
        return model.predict_noise(x, cond, t, attributes).float()
    both = model.predict_noise(torch.cat([x, x]), torch.cat([cond, cond]), torch.cat([t, t]),
                               torch.cat([attributes, unknown_vector(attributes)])).float()
    eps_cond, eps_uncond = both.chunk(2)
    return classifier_free_guidance(eps_cond, eps_uncond, scale)
