"""Random draws of a sampler: one torch.Generator per run (or per batch element), or replayed pre-drawn tensors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from lungddpm.errors import ConfigError

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
