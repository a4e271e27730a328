"""One entry point for every sampler: ``sample`` (one batch) and ``sample_batches`` (many samples, each with its own seed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.ancestral import sample_aas
from lungddpm.sampling.noise import make_generator
from lungddpm.sampling.options import ANCESTRAL, DEFAULT_SOLVER_STEPS, default_steps, network_passes
from lungddpm.sampling.solvers import sample_aas_solver


def sample(model: LungDDPM, cond: torch.Tensor, x_ref: torch.Tensor, *, sampler: str, steps: int | None = None,
           variant: str = "paper", generator: torch.Generator | Sequence[torch.Generator] | None = None,
           draws: Iterable[torch.Tensor] | None = None, progress: ProgressCallback | None = None,
           precision: str = "fp32", x0_correction: str = "clamp", attributes: torch.Tensor | None = None,
           guidance: float = 1.0) -> torch.Tensor:
    """x_0 (B,1,D,H,W) with AAS: ddpm runs the model's T steps (Alg. 2), a solver `steps` passes (default: the model's, else 3).

    ``attributes`` (B, A; NaN unknown) and ``guidance`` w: classifier-free guidance of an attribute model.
    """
    passes = network_passes(sampler, steps, model.config.timesteps, variant,
                            default_steps(model.config.solver_steps, DEFAULT_SOLVER_STEPS))
    if sampler == ANCESTRAL:
        return sample_aas(model, cond, x_ref, variant=variant, generator=generator, draws=draws, progress=progress,
                          precision=precision, attributes=attributes, guidance=guidance)
    return sample_aas_solver(model, cond, x_ref, sampler, passes, generator=generator, draws=draws, progress=progress,
                             x0_correction=x0_correction, precision=precision, attributes=attributes, guidance=guidance)


def sample_batches(model: LungDDPM, cond: torch.Tensor, x_ref: torch.Tensor, seeds: Sequence[int], batch: int, *,
                   sampler: str, steps: int, variant: str = "paper", progress: ProgressCallback | None = None,
                   precision: str = "fp32", x0_correction: str = "clamp", attributes: torch.Tensor | None = None,
                   guidance: float = 1.0) -> torch.Tensor:
    """x_0 of N = len(seeds) samples, `batch` per network pass; sample n draws from its own generator seeded seeds[n].

    ``attributes`` (N, A): each sample's own (an attribute model; None: a model without attributes).

    ``steps`` is the network passes per sample (``network_passes``); ``progress(done, total)`` is called
    with 0 first and then after every pass, over all batches.
    """
    groups = [range(start, min(start + batch, len(seeds))) for start in range(0, len(seeds), batch)]
    total = steps * len(groups)
    if progress is not None:
        progress(0, total)
    out = []
    for g, members in enumerate(groups):
        part = slice(members.start, members.stop)
        generators = [make_generator(seeds[n], model.device) for n in members]
        report = None if progress is None else (lambda done, _, offset=g * steps: progress(offset + done, total))
        out.append(sample(model, cond[part], x_ref[part], sampler=sampler, steps=steps, variant=variant,
                          generator=generators, progress=report, precision=precision, x0_correction=x0_correction,
                          attributes=None if attributes is None else attributes[part], guidance=guidance))
    return torch.cat(out)
