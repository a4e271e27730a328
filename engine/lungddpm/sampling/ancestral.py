"""The ancestral DDPM sampler with anatomically aware sampling (Alg. 2 of the paper), in model space.

Every step is eq. 4 (the posterior step of the whole volume) followed by AAS (eq. 5 and 6, see
``sampling.aas``). Every random draw goes through a NoiseSource, in one fixed order for both AAS
variants: x_T first, then for each step t = T−1 … 0 the posterior noise z (multiplied by 0 at t = 0)
and the reference noise e. A seed therefore reproduces a run, and pre-drawn tensors can replay the
released loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lungddpm.errors import ConfigError
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.precision import autocast
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.aas import aas_inputs, blend, noised_reference, reference_level
from lungddpm.sampling.guidance import guided_noise
from lungddpm.sampling.noise import NoiseSource
from lungddpm.sampling.options import VARIANTS


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
    attributes: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Alg. 2: sample x_0 (B,1,D,H,W) in model space for layout cond and reference x_ref with AAS.

    ``blend_from``: the reference is pasted after step t only when t ≤ blend_from (default T,
    i.e. at every step). ``progress(step, total)`` is called after each of the T steps.
    ``precision``: the network's autocast dtype (fp32, bf16, fp16). ``attributes`` (B, A) and
    ``guidance`` w: classifier-free guidance of an attribute model (``sampling.guidance``).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown AAS variant {variant!r}; choose one of {VARIANTS}")
    T = model.config.timesteps
    blend_from = T if blend_from is None else int(blend_from)
    device = model.device
    cond, x_ref, background = aas_inputs(model, cond, x_ref)
    noise = NoiseSource(device, torch.float32, generator, draws)
    attributes = None if attributes is None else attributes.to(device)

    x = noise(x_ref.shape)
    for i in reversed(range(T)):
        t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
        with autocast(device, precision):
            eps = guided_noise(model, x, cond, t, attributes, guidance)
        x = model.diffusion.p_sample(x, t, eps, noise(x.shape))
        x_ref_t = noised_reference(x_ref, *reference_level(model.diffusion, t, variant, x.ndim), noise(x.shape))
        if i <= blend_from:
            x = blend(x, x_ref_t, background)
        if progress is not None:
            progress(T - i, T)
    return x
