"""AAS sampling: paper vs released variants, seeds, blend_from, draws, progress."""

from __future__ import annotations

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import ConfigError, InputError, make_generator, sample_aas
from lungddpm.sampling.aas import background_mask


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def layout():
    return random_layout()


def test_paper_variant_pastes_exact_reference_on_background(model, layout):
    cond, x_ref = layout
    out = sample_aas(model, cond, x_ref, variant="paper", generator=make_generator(1))
    bg = background_mask(cond)
    assert bg.any() and (~bg).any()
    assert torch.equal(out[bg], x_ref[bg])
    assert not torch.equal(out[~bg], x_ref[~bg])


def test_released_variant_leaves_noise_of_last_level_on_background(model, layout):
    cond, x_ref = layout
    out = sample_aas(model, cond, x_ref, variant="released", generator=make_generator(1))
    bg = background_mask(cond)
    resid = (out - x_ref)[bg]
    expected_std = (1 - model.diffusion.alphas_cumprod[0]).sqrt().item()
    assert abs(resid.std().item() / expected_std - 1) < 0.05
    assert abs(resid.mean().item()) < 0.1 * expected_std


def test_seed_reproduces_bit_for_bit_and_seeds_differ(model, layout):
    cond, x_ref = layout
    a = sample_aas(model, cond, x_ref, generator=make_generator(7))
    b = sample_aas(model, cond, x_ref, generator=make_generator(7))
    c = sample_aas(model, cond, x_ref, generator=make_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_both_variants_consume_the_same_draws(model, layout):
    cond, x_ref = layout
    T = model.config.timesteps
    draws = [torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(i)) for i in range(1 + 2 * T)]
    paper = sample_aas(model, cond, x_ref, variant="paper", draws=draws)
    released = sample_aas(model, cond, x_ref, variant="released", draws=draws)
    inside = ~background_mask(cond)
    assert paper.shape == released.shape and not torch.equal(paper, released)
    with pytest.raises(ConfigError, match="ran out"):
        sample_aas(model, cond, x_ref, draws=draws[:-1])
    assert inside.any()


def test_blend_from_limits_blending_to_late_steps(model, layout):
    cond, x_ref = layout
    bg = background_mask(cond)
    never = sample_aas(model, cond, x_ref, blend_from=-1, generator=make_generator(3))
    late = sample_aas(model, cond, x_ref, blend_from=2, generator=make_generator(3))
    always = sample_aas(model, cond, x_ref, generator=make_generator(3))
    assert not torch.equal(never[bg], x_ref[bg])
    assert torch.equal(late[bg], x_ref[bg]) and torch.equal(always[bg], x_ref[bg])  # last step pastes exactly
    assert not torch.equal(late[~bg], always[~bg])  # fewer blended steps change the lung content


def test_progress_and_batches(model):
    cond, x_ref = random_layout(batch=2)
    calls = []
    out = sample_aas(model, cond, x_ref, generator=make_generator(0), progress=lambda i, n: calls.append((i, n)))
    T = model.config.timesteps
    assert out.shape == x_ref.shape and calls == [(i, T) for i in range(1, T + 1)]
    assert not torch.equal(out[0], out[1])  # each batch member gets its own noise


def test_bad_inputs(model, layout):
    cond, x_ref = layout
    with pytest.raises(ConfigError, match="variant"):
        sample_aas(model, cond, x_ref, variant="fast")
    bad = x_ref.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        sample_aas(model, cond, bad)
    with pytest.raises(InputError, match="layout tensor"):
        sample_aas(model, cond[:, :1], x_ref)
