"""Few-step deterministic solvers with AAS: DDIM and DPM-Solver++ (multistep, orders 2 and 3).

Written here rather than imported from diffusers so that the engine (and 3D Slicer) needs no extra
run-time dependency and so that AAS can paste the reference at each step's exact noise level; the
maths is tested against diffusers' ``DPMSolverMultistepScheduler`` (dpmsolver++, midpoint,
trailing timesteps, final sigma zero, lower-order final steps), see Testing/engine/test_solvers.py.

Data-prediction form (Lu et al. 2022, DPM-Solver++): with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t) and
λ_t = log(α_t / σ_t), a step s -> t with h = λ_t − λ_s uses the denoised estimates x̂0:
order 1 (= DDIM, η = 0):  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0
order 2 (midpoint):       ... − ½ α_t (e^{−h} − 1) D1
order 3:                  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0 + α_t ((e^{−h} − 1)/h + 1) D1
                                − α_t ((e^{−h} − 1 + h)/h² − ½) D2
The last step goes to σ = 0 (ᾱ = 1), where every order reduces to x_0 = x̂0; it is taken at order 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from lungddpm.errors import ConfigError
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.precision import autocast
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.aas import aas_inputs, blend, noised_reference
from lungddpm.sampling.guidance import guided_noise
from lungddpm.sampling.noise import NoiseSource
from lungddpm.sampling.options import SOLVER_ORDERS, X0_CORRECTIONS

LOWER_ORDER_BELOW_STEPS = 15  # as diffusers: with fewer steps, the last two steps use lower orders
DYNAMIC_THRESHOLD_RATIO = 0.995  # Imagen / DPM-Solver dynamic thresholding, as the released Lung-DDPM+ sampler


def correct_x0(x0: torch.Tensor, method: str) -> torch.Tensor:
    """Correct a denoised estimate: clamp to [−1, 1], dynamic thresholding, or nothing.

    Dynamic thresholding (Saharia et al. 2022; DPM-Solver's ``dynamic_thresholding_fn`` with max value
    1): per sample, s = max(1, 99.5th percentile of |x̂0|), then x̂0 ← clamp(x̂0, −s, s) / s.
    """
    if method == "clamp":
        return x0.clamp(-1.0, 1.0)
    if method == "none":
        return x0
    if method != "dynamic":
        raise ConfigError(f"x0 correction {method!r} is not available; choose one of {X0_CORRECTIONS}")
    s = torch.quantile(x0.abs().reshape(x0.shape[0], -1).float(), DYNAMIC_THRESHOLD_RATIO, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps T−1, …, evenly spaced ("trailing" spacing, starts at the pure-noise end)."""
    if not 1 <= steps <= num_timesteps:
        raise ConfigError(f"steps must lie in [1, {num_timesteps}] for this model; got {steps}")
    return (np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1).tolist()


class MultistepSolver:
    """DPM-Solver++ state over one trajectory: the schedule and the last denoised estimates."""

    def __init__(self, alphas_cumprod: torch.Tensor, order: int, steps: int) -> None:
        self.ac = alphas_cumprod.detach().double().cpu().numpy()  # host copy: no device syncs inside the loop
        self.order = order
        self.steps = steps
        self.history: list[tuple[torch.Tensor, float]] = []  # (x̂0, λ) of previous steps, newest last

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        """α_t, σ_t and λ_t for a timestep (t = −1 means the clean end, σ = 0)."""
        if t < 0:
            return 1.0, 0.0, float("inf")
        a = float(self.ac[t])
        alpha, sigma = a**0.5, (1 - a) ** 0.5
        return alpha, sigma, float(np.log(alpha) - np.log(sigma))

    def _order_now(self, index: int) -> int:
        """The order for step `index`: warm-up from history, lower orders at the end as diffusers does."""
        order = min(self.order, len(self.history) + 1)
        if index == self.steps - 1:
            return 1
        if index == self.steps - 2 and self.steps < LOWER_ORDER_BELOW_STEPS:
            return min(order, 2)
        return order

    def step(self, x: torch.Tensor, x0: torch.Tensor, t: int, t_next: int, index: int) -> torch.Tensor:
        """Advance x at timestep t to t_next (−1: clean) given the denoised estimate x0."""
        alpha_s, sigma_s, lam_s = self._alpha_sigma_lambda(t)
        alpha_t, sigma_t, lam_t = self._alpha_sigma_lambda(t_next)
        order = self._order_now(index)
        if sigma_t == 0.0:
            out = x0.clone()
        else:
            h = lam_t - lam_s
            phi = np.expm1(-h)  # e^{−h} − 1
            out = (sigma_t / sigma_s) * x - (alpha_t * phi) * x0
            if order >= 2:
                x0_1, lam_1 = self.history[-1]
                r0 = (lam_s - lam_1) / h
                d1_0 = (x0 - x0_1) / r0
                if order == 2:
                    out = out - 0.5 * (alpha_t * phi) * d1_0
                else:
                    x0_2, lam_2 = self.history[-2]
                    r1 = (lam_1 - lam_2) / h
                    d1_1 = (x0_1 - x0_2) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    out = out + (alpha_t * (phi / h + 1.0)) * d1 - (alpha_t * ((phi + h) / h**2 - 0.5)) * d2
        self.history = (self.history + [(x0, lam_s)])[-2:]
        return out


@torch.no_grad()
def sample_aas_solver(
    model: LungDDPM,
    cond: torch.Tensor,
    x_ref: torch.Tensor,
    sampler: str,
    steps: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    draws: Iterable[torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    x0_correction: str = "clamp",
    aas: bool = True,
    precision: str = "fp32",
    attributes: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Sample x_0 with DDIM or DPM-Solver++ in `steps` network passes, with AAS after every step.

    After the step that lands on timestep t', the background is replaced by the reference noised to
    ᾱ_{t'} (fresh noise from the generator or `draws`: x_T first, then one per step); the last step
    lands on the clean end, so the output's background is exactly the reference. ``precision``: the
    network's autocast dtype (fp32, bf16, fp16); the solver's own arithmetic is float32. ``attributes``
    (B, A) and ``guidance`` w: classifier-free guidance of an attribute model (``sampling.guidance``).
    """
    if sampler not in SOLVER_ORDERS:
        raise ConfigError(f"unknown solver {sampler!r}; choose one of {sorted(SOLVER_ORDERS)}")
    if x0_correction not in X0_CORRECTIONS:
        raise ConfigError(f"x0 correction {x0_correction!r} is not available; choose one of {X0_CORRECTIONS}")
    device = model.device
    cond, x_ref, background = aas_inputs(model, cond, x_ref)
    noise = NoiseSource(device, torch.float32, generator, draws)
    diffusion = model.diffusion
    timesteps = trailing_timesteps(diffusion.num_timesteps, steps)
    solver = MultistepSolver(diffusion.alphas_cumprod, SOLVER_ORDERS[sampler], steps)
    attributes = None if attributes is None else attributes.to(device)

    x = noise(x_ref.shape)
    for n, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        with autocast(device, precision):
            eps = guided_noise(model, x, cond, t_batch, attributes, guidance)
        x0 = correct_x0(diffusion.predict_start_from_noise(x, t_batch, eps), x0_correction)
        t_next = timesteps[n + 1] if n + 1 < len(timesteps) else -1
        x = solver.step(x, x0, t, t_next, n)
        if aas:
            ac_next = 1.0 if t_next < 0 else float(solver.ac[t_next])
            x_ref_t = noised_reference(x_ref, ac_next**0.5, (1 - ac_next) ** 0.5, noise(x.shape))
            x = blend(x, x_ref_t, background)
        if progress is not None:
            progress(n + 1, steps)
    return x
