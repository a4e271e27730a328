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

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from .errors import ConfigError, InputError
from .model import LungDDPM
from .precision import autocast

VARIANTS = ("paper", "released")
ProgressCallback = Callable[[int, int], None]


class NoiseSource:
    """Standard-normal draws from a torch.Generator (or one per batch element), or replayed from pre-drawn tensors.

    With a sequence of generators, batch element b of every draw comes from generator b alone, so a
    batch of several samples gives each sample exactly what it would get when run on its own.
    """

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        draws: Iterable[torch.Tensor] | None = None,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.generator = generator
        self._draws: Iterator[torch.Tensor] | None = iter(draws) if draws is not None else None
        self.count = 0

    def __call__(self, shape: torch.Size) -> torch.Tensor:
        """The next draw, with the given shape, on the sampler's device."""
        self.count += 1
        if self._draws is not None:
            try:
                value = next(self._draws)
            except StopIteration:
                raise ConfigError(f"the supplied draws ran out at draw {self.count}; supply one per random draw") from None
            if value.shape != shape:
                raise ConfigError(f"draw {self.count} has shape {tuple(value.shape)}, the loop needs {tuple(shape)}")
            return value.to(self.device, self.dtype)
        if isinstance(self.generator, Sequence):
            if len(self.generator) != shape[0]:
                raise ConfigError(f"{len(self.generator)} generators for a batch of {shape[0]}; pass one per batch element")
            return torch.cat([self._randn((1, *shape[1:]), g) for g in self.generator])
        return self._randn(shape, self.generator)

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """One standard-normal tensor drawn on the generator's device, moved to the sampler's device."""
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=self.dtype).to(self.device)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on device seeded with seed (one per run, recorded with the output)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def background_mask(cond: torch.Tensor) -> torch.Tensor:
    """Voxels where every layout channel is exactly −1 (outside lung and nodule), shape (B, 1, ...)."""
    return (cond == -1).all(dim=1, keepdim=True)


def noised_reference(model: LungDDPM, x_ref: torch.Tensor, t: torch.Tensor, e: torch.Tensor, variant: str) -> torch.Tensor:
    """The reference at the noise level AAS pastes after step t (ᾱ_t if released, ᾱ_{t−1} if paper)."""
    if variant == "released":
        return model.diffusion.q_sample(x_ref, t, e)
    return model.diffusion.q_sample_prev(x_ref, t, e)


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
