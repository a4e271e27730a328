"""AAS (eq. 5 and 6) as named functions: closed forms, the noise level of each variant, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import InputError
from lungddpm.sampling.aas import aas_inputs, background_mask, blend, noised_reference, reference_level


def _alpha_bar(t: int, T: int, s: float = 0.008) -> float:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal) written out here, independently of the engine."""
    f = lambda n: math.cos((n / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731  (grid n = 0 … T, as released)
    value = 1.0
    for n in range(t + 1):  # ᾱ_t = Π (1 − β_n), β_n = 1 − f(n+1)/f(n) clipped at 0.999
        value *= 1 - min(1 - f(n + 1) / f(n), 0.999)
    return value


def test_noised_reference_is_eq5_and_blend_is_eq6():
    cond, x_ref = random_layout(seed=1)
    e = torch.randn_like(x_ref)
    assert torch.equal(noised_reference(x_ref, 0.6, 0.8, e), 0.6 * x_ref + 0.8 * e)
    bg = background_mask(cond)
    x, x_ref_t = torch.randn_like(x_ref), torch.randn_like(x_ref)
    out = blend(x, x_ref_t, bg)
    assert torch.equal(out[bg.expand_as(out)], x_ref_t[bg.expand_as(out)])
    assert torch.equal(out[~bg.expand_as(out)], x[~bg.expand_as(out)])
    assert bg.any() and (~bg).any() and bg.shape == (1, 1, 16, 16, 16)


@pytest.mark.parametrize("t", [0, 3, 7])
def test_paper_pastes_at_the_output_level_released_at_the_input_level(t):
    model = random_model()
    T = model.config.timesteps
    ts = torch.tensor([t])
    paper = [float(v) for v in reference_level(model.diffusion, ts, "paper", 5)]
    released = [float(v) for v in reference_level(model.diffusion, ts, "released", 5)]
    before = _alpha_bar(t - 1, T) if t > 0 else 1.0  # ᾱ_{t−1}; ᾱ_{−1} = 1: the last paper step pastes the exact reference
    assert paper == pytest.approx([math.sqrt(before), math.sqrt(1 - before)], abs=1e-6)
    assert released == pytest.approx([math.sqrt(_alpha_bar(t, T)), math.sqrt(1 - _alpha_bar(t, T))], abs=1e-6)


def test_aas_inputs_refuse_a_non_finite_reference_and_move_to_float32():
    model = random_model()
    cond, x_ref = random_layout()
    c, x, bg = aas_inputs(model, cond.double(), x_ref.double())
    assert c.dtype == x.dtype == torch.float32 and torch.equal(bg, background_mask(cond))
    x_ref[0, 0, 3, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        aas_inputs(model, cond, x_ref)
