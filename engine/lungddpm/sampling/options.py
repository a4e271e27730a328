"""Sampler names, defaults and AAS variants: the one place the command line, the API and the samplers take them from.

Defaults (README "Fidelity check"; ddpm is the released 250-step ancestral sampler): interactive use
(synthesize, the Slicer panel) gets the fastest setting that passed the fidelity check; batch data sets
(generate), where fidelity outweighs latency, the fewest steps at which lung and nodule mean HU came
within 5 HU of ddpm's. A model file may carry its own default (``ModelConfig.solver_steps``, measured
against that model's ddpm): it replaces both. Torch-free, so that the command line can build its
choices without torch.
"""

from __future__ import annotations

from lungddpm.errors import ConfigError

ANCESTRAL = "ddpm"  # the released sampler: all T steps of Alg. 2
SOLVER_ORDERS = {"ddim": 1, "dpmpp2m": 2, "dpmpp3m": 3}  # few-step solvers and their DPM-Solver++ order
SAMPLERS = (ANCESTRAL, *SOLVER_ORDERS)
DEFAULT_SAMPLER = "dpmpp2m"
DEFAULT_SOLVER_STEPS = 3
GENERATE_SOLVER_STEPS = 10
VARIANTS = ("paper", "released")  # AAS noise level of the pasted reference (see sampling.aas)
X0_CORRECTIONS = ("clamp", "dynamic", "none")  # what the solvers do to each denoised estimate
# Seeds run from 0 to MAX_SEED: numpy takes no negative seeds, torch.Generator none of 2**64 or above, and a
# signed 64-bit integer holds every seed of this range.
MAX_SEED = 2**63 - 1


def check_sampler(sampler: str) -> str:
    """The sampler name itself, or ConfigError listing the samplers."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is not available; choose one of {SAMPLERS}")
    return sampler


def default_steps(model_steps: int | None, project_default: int) -> int:
    """The solver steps when none are asked: the model file's own (solver_steps) if it has one, else the project's."""
    return int(model_steps or project_default)


def network_passes(sampler: str, steps: int | None, timesteps: int, variant: str = "paper",
                   default_steps: int = DEFAULT_SOLVER_STEPS) -> int:
    """The network passes of one sample (T for ddpm), or ConfigError for a sampler, steps or variant that do not fit."""
    check_sampler(sampler)
    if steps is not None and steps < 1:
        raise ConfigError(f"steps={steps} (--steps): give at least 1 network pass, or omit it for the default")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown AAS variant {variant!r}; choose one of {VARIANTS}")
    if sampler == ANCESTRAL:
        if steps not in (None, timesteps):
            raise ConfigError(f"the ddpm sampler runs all {timesteps} steps of this model; omit steps or pass "
                              f"steps={timesteps}, or choose a fast sampler (ddim, dpmpp2m, dpmpp3m) for fewer steps")
        return timesteps
    if variant != "paper":
        raise ConfigError(f"the {variant!r} AAS variant exists only for the ddpm sampler; fast samplers paste the "
                          "reference at each step's own noise level (as the paper does)")
    return int(steps or min(default_steps, timesteps))
