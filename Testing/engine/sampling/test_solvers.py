"""Few-step solvers: equal to diffusers' reference implementation; AAS at every step; exact background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import ConfigError, make_generator
from lungddpm.sampling.aas import background_mask
from lungddpm.sampling.solvers import correct_x0, sample_aas_solver, trailing_timesteps

diffusers = pytest.importorskip("diffusers", reason="diffusers (test extra) is the reference for the solver maths")


@pytest.fixture(scope="module")
def model():
    return random_model(seed=7, timesteps=50)


def _tanh_denoiser(scale: float):
    """A model whose denoiser has x̂0 = scale · tanh(x + layout): bounded, nonlinear in x, known exactly."""
    m = random_model(seed=7, timesteps=50)
    ac = m.diffusion.alphas_cumprod

    def predict_noise(x, cond, t):
        a = ac[t].reshape(-1, 1, 1, 1, 1)
        return (x - a.sqrt() * scale * torch.tanh(x + 0.5 * cond[:, :1])) / (1 - a).sqrt()

    m.predict_noise = predict_noise
    return m


@pytest.fixture(scope="module")
def smooth_model():
    """x̂0 = 0.8 tanh(x + layout) stays inside [−1, 1]: the solver orders visibly differ."""
    return _tanh_denoiser(0.8)


@pytest.fixture(scope="module")
def overshooting_model():
    """x̂0 = 1.6 tanh(x + layout) leaves [−1, 1]: dynamic thresholding rescales it."""
    return _tanh_denoiser(1.6)


def _reference_loop(scheduler, model, cond, x_T, steps):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model.predict_noise(x, cond, torch.tensor([int(t)]))
            x = scheduler.step(eps, t, x).prev_sample
    return x, [int(t) for t in scheduler.timesteps]


def _dpm_solver(model, order, thresholding=False):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=model.config.timesteps, trained_betas=model.diffusion.betas.double().numpy(),
        solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        timestep_spacing="trailing", final_sigmas_type="zero", prediction_type="epsilon",
        thresholding=thresholding, dynamic_thresholding_ratio=0.995, sample_max_value=1e9)


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpmpp2m", 2), ("dpmpp3m", 3)])
def test_solver_equals_diffusers_dpm_solver_pp(smooth_model, sampler, order, steps):
    model = smooth_model
    cond, x_ref = random_layout()
    x_T = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(steps))
    expected, timesteps = _reference_loop(_dpm_solver(model, order), model, cond, x_T, steps)
    assert timesteps == trailing_timesteps(model.config.timesteps, steps)
    ours = sample_aas_solver(model, cond, x_ref, sampler, steps, draws=[x_T], x0_correction="none", aas=False)
    assert expected.abs().max().item() < 1.5  # a bounded trajectory: an absolute tolerance means something
    err = (ours - expected).abs().max().item()
    assert err <= 1e-4, err  # float32; x̂0 divides by α_t, which is 0.006 at t = T−1


def test_dynamic_thresholding_equals_diffusers(overshooting_model):
    """x0_correction="dynamic" is diffusers' thresholding (ratio 0.995, s ≥ 1), and differs from clamping here."""
    cond, x_ref = random_layout()
    x_T = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(4))
    expected, _ = _reference_loop(_dpm_solver(overshooting_model, 3, thresholding=True), overshooting_model, cond, x_T, 10)
    ours = sample_aas_solver(overshooting_model, cond, x_ref, "dpmpp3m", 10, draws=[x_T], x0_correction="dynamic", aas=False)
    clamped = sample_aas_solver(overshooting_model, cond, x_ref, "dpmpp3m", 10, draws=[x_T], x0_correction="clamp", aas=False)
    assert (ours - expected).abs().max().item() <= 1e-4
    assert (ours - clamped).abs().max().item() > 1e-2


def test_dynamic_thresholding_is_per_sample_and_leaves_estimates_within_one_alone():
    """s = max(1, 99.5th percentile of |x̂0|) for each sample of a batch (numpy's percentile here): a sample within
    [−1, 1] comes back unchanged, an overshooting one is clipped to ±s and divided by its own s."""
    g = torch.Generator().manual_seed(0)
    calm = torch.rand((1, 1, 8, 8, 8), generator=g) - 0.5  # |x̂0| ≤ 0.5: its percentile is below 1, so s = 1
    wild = (torch.rand((1, 1, 8, 8, 8), generator=g) * 2 - 1) * 3.0  # percentile about 3
    out = correct_x0(torch.cat([calm, wild]), "dynamic")
    s = float(np.quantile(np.abs(wild.numpy()), 0.995))
    assert s > 2.5 and torch.equal(out[0], calm[0])
    torch.testing.assert_close(out[1], wild[0].clamp(-s, s) / s)
    with pytest.raises(ConfigError, match="x0 correction"):
        correct_x0(calm, "tanh")  # called directly too, an unknown correction is refused


def test_trailing_timesteps_in_closed_form():
    """All of the model's steps are T−1, …, 0; fewer are round(T − k·T/steps) − 1 (diffusers' "trailing")."""
    assert trailing_timesteps(8, 8) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert trailing_timesteps(250, 3) == [249, 166, 82]
    assert trailing_timesteps(20, 1) == [19]


def test_batch_with_one_generator_per_sample_equals_separate_runs(model):
    cond, x_ref = random_layout()
    cond2, x_ref2 = torch.cat([cond, cond.flip(-1)]), torch.cat([x_ref, x_ref.flip(-1)])
    batch = sample_aas_solver(model, cond2, x_ref2, "dpmpp2m", 4, generator=[make_generator(5), make_generator(6)])
    one = sample_aas_solver(model, cond2[1:], x_ref2[1:], "dpmpp2m", 4, generator=[make_generator(6)])
    assert (batch[1:] - one).abs().max().item() <= 1e-4  # batched convolutions round differently, nothing more
    with pytest.raises(ConfigError, match="one per batch element"):
        sample_aas_solver(model, cond2, x_ref2, "dpmpp2m", 4, generator=[make_generator(5)])


def test_ddim_equals_diffusers_ddim(smooth_model):
    model = smooth_model
    cond, x_ref = random_layout()
    x_T = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(0))
    ddim = diffusers.DDIMScheduler(num_train_timesteps=model.config.timesteps, trained_betas=model.diffusion.betas.double().numpy(),
                                   clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="epsilon")
    expected, _ = _reference_loop(ddim, model, cond, x_T, 10)
    ours = sample_aas_solver(model, cond, x_ref, "ddim", 10, draws=[x_T], x0_correction="none", aas=False)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_orders_differ_on_the_smooth_denoiser(smooth_model):
    """Guards the comparisons above: a wrong higher-order term would be visible at this size."""
    cond, x_ref = random_layout()
    x_T = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(3))
    runs = [sample_aas_solver(smooth_model, cond, x_ref, s, 10, draws=[x_T], aas=False) for s in ("ddim", "dpmpp2m", "dpmpp3m")]
    assert (runs[0] - runs[1]).abs().max().item() > 1e-3 and (runs[1] - runs[2]).abs().max().item() > 1e-4


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "dpmpp3m"])
def test_aas_background_is_exactly_the_reference_and_seeds_reproduce(model, sampler):
    cond, x_ref = random_layout()
    calls = []
    a = sample_aas_solver(model, cond, x_ref, sampler, 8, generator=make_generator(1), progress=lambda i, n: calls.append(i))
    b = sample_aas_solver(model, cond, x_ref, sampler, 8, generator=make_generator(1))
    c = sample_aas_solver(model, cond, x_ref, sampler, 8, generator=make_generator(2))
    bg = background_mask(cond)
    assert torch.equal(a[bg], x_ref[bg]) and not torch.equal(a[~bg], x_ref[~bg])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls == list(range(1, 9))


def test_bad_solver_arguments(model):
    cond, x_ref = random_layout()
    with pytest.raises(ConfigError, match="steps"):
        sample_aas_solver(model, cond, x_ref, "ddim", 0)
    with pytest.raises(ConfigError, match="solver"):
        sample_aas_solver(model, cond, x_ref, "euler", 5)
    with pytest.raises(ConfigError, match="x0 correction"):
        sample_aas_solver(model, cond, x_ref, "ddim", 5, x0_correction="tanh")
    with pytest.raises(ConfigError, match="precision"):
        sample_aas_solver(model, cond, x_ref, "ddim", 5, precision="int8")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_aas_pastes_the_reference_at_the_level_of_the_timestep_each_step_lands_on(sampler):
    """Eq. 5 for the solvers, in closed form: the network's input at step n has the background
    sqrt(ᾱ_{t_n}) x_ref + sqrt(1 − ᾱ_{t_n}) ε_n, with ε_n the n-th replayed draw (the fast check of the noise level)."""
    m = random_model(seed=7, timesteps=50)
    inputs = []
    network = m.predict_noise
    m.predict_noise = lambda x, cond, t, *rest, **kw: inputs.append(x.clone()) or network(x, cond, t, *rest, **kw)
    cond, x_ref = random_layout()
    steps = 6
    draws = [torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(n)) for n in range(steps + 1)]
    sample_aas_solver(m, cond, x_ref, sampler, steps, draws=draws)
    bg = ((cond[:, :1] == -1) & (cond[:, 1:] == -1)).expand_as(x_ref)  # outside lung and nodule, computed here
    ac = m.diffusion.alphas_cumprod.double()
    for n, t in enumerate(trailing_timesteps(50, steps)[1:], start=1):
        expected = ac[t].sqrt() * x_ref.double() + (1 - ac[t]).sqrt() * draws[n].double()
        assert torch.allclose(inputs[n][bg].double(), expected[bg], atol=1e-5), (n, t)
        assert not torch.isclose(inputs[n][~bg].double(), expected[~bg], atol=1e-5).any()  # the layout is sampled
