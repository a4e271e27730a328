"""Ancestral DDPM sampling with anatomically aware sampling (AAS) in model space.

AAS: a network denoises the whole volume, and after every step the region outside the layout
(background) is replaced by the reference CT noised to a matching level, so the anatomy outside
the lungs stays real. Two variants differ only in that noise level:

- ``released``: step t (which produces x_{t−1}) pastes the reference noised to ᾱ_t, the level of
  the step's *input*, as the released script does. Its output's background is the reference plus
  noise of std sqrt(1 − ᾱ_0) (≈ 0.014 in [−1, 1] units at T = 250), never exactly the reference.
- ``paper`` (default; Jiang et al., Alg. 2, eq. 5–6): the reference is noised to ᾱ_{t−1}, the level
  of the step's *output*, so the last step pastes the exact reference.

Every random draw goes through a NoiseSource, in one fixed order for both variants: x_T first,
then for each step t = T−1 … 0 the posterior noise z (multiplied by 0 at t = 0) and the reference
noise e. A seed therefore reproduces a run, and pre-drawn tensors can replay the released loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lungddpm.errors import ConfigError, InputError
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.precision import autocast
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.aas import VARIANTS, background_mask, noised_reference
from lungddpm.sampling.noise import NoiseSource


@torch.no_grad()
def sample_aas(
    model: LungDDPM,
    cond: torch.Tensor,
    x_ref: torch.Tensor,
    variant: str = "paper",
    blend_from: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    draws: Iterable[torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Sample x_0 (B,1,D,H,W) in model space for layout cond and reference x_ref with AAS.

    ``blend_from``: the reference is pasted after step t only when t ≤ blend_from (default T,
    i.e. at every step). ``progress(step, total)`` is called after each of the T steps.
    ``precision``: the network's autocast dtype (fp32, bf16, fp16).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown AAS variant {variant!r}; choose one of {VARIANTS}")
    model.check_inputs(x_ref, cond)
    if not torch.isfinite(x_ref).all():
        raise InputError("the reference tensor holds NaN or infinite values; check the reference CT")
    T = model.config.timesteps
    blend_from = T if blend_from is None else int(blend_from)
    device = model.device
    x_ref = x_ref.to(device, torch.float32)
    cond = cond.to(device, torch.float32)
    background = background_mask(cond)
    noise = NoiseSource(device, torch.float32, generator, draws)

    x = noise(x_ref.shape)
    for i in reversed(range(T)):
        t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
        with autocast(device, precision):
            eps = model.predict_noise(x, cond, t)
        x = model.diffusion.p_sample(x, t, eps.float(), noise(x.shape))
        x_ref_t = noised_reference(model, x_ref, t, noise(x.shape), variant)
        if i <= blend_from:
            x = torch.where(background, x_ref_t, x)
        if progress is not None:
            progress(T - i, T)
    return x
