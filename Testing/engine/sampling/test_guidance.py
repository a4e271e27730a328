"""Classifier-free guidance: the equation, one batched pass for both predictions, every sampler, AAS after it."""

from __future__ import annotations

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm.sampling.guidance import classifier_free_guidance, guided_noise
from lungddpm.sampling.noise import make_generator
from lungddpm.sampling.options import SAMPLERS
from lungddpm.sampling.sample import sample

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEMA = ("texture",)


def test_guidance_equation_at_known_scales():
    c, u = torch.tensor([3.0]), torch.tensor([1.0])
    assert classifier_free_guidance(c, u, 0.0) == u and classifier_free_guidance(c, u, 1.0) == c
    assert classifier_free_guidance(c, u, 2.5) == torch.tensor([6.0])  # 1 + 2.5 · 2


def test_guided_noise_is_one_batched_pass_equal_to_separate_passes(monkeypatch):
    model = random_model(attributes=SCHEMA)
    cond, x = random_layout(batch=2)
    t, a = torch.tensor([5, 5]), torch.tensor([[1.0], [5.0]])
    with torch.no_grad():
        eps_c = model.predict_noise(x, cond, t, a)
        eps_u = model.predict_noise(x, cond, t, torch.full_like(a, float("nan")))
        batches = []
        forward = model.predict_noise
        monkeypatch.setattr(model, "predict_noise", lambda *args: batches.append(args[0].shape[0]) or forward(*args))
        guided = guided_noise(model, x, cond, t, a, 3.0)
    assert batches == [4]
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_is_guided_and_keeps_the_reference_outside(sampler, monkeypatch):
    model = random_model(attributes=SCHEMA)
    cond, x_ref = random_layout()
    steps = None if sampler == "ddpm" else 3
    run = lambda a, w: sample(model, cond, x_ref, sampler=sampler, steps=steps, generator=make_generator(1),
                              attributes=a, guidance=w)
    solid, glass = run(torch.tensor([[5.0]]), 4.0), run(torch.tensor([[1.0]]), 4.0)
    inside = (cond > -1).any(dim=1, keepdim=True)
    assert (solid - glass)[inside].abs().max() > 1e-3  # the attributes reach the sample
    if sampler != "ddpm":  # solvers land on ᾱ = 1: the background is the reference exactly
        assert torch.equal(solid[~inside], x_ref[~inside])
    calls = []
    forward = model.predict_noise
    monkeypatch.setattr(model, "predict_noise", lambda *args: calls.append(args[0].shape[0]) or forward(*args))
    run(torch.tensor([[5.0]]), 4.0)
    assert calls == [2] * len(calls) and len(calls) == (model.config.timesteps if sampler == "ddpm" else 3)


def test_unguided_scale_one_is_the_conditional_sample():
    model = random_model(attributes=SCHEMA)
    cond, x_ref = random_layout()
    a = torch.tensor([[2.0]])
    plain = sample(model, cond, x_ref, sampler="ddim", steps=3, generator=make_generator(2), attributes=a, guidance=1.0)
    guided = sample(model, cond, x_ref, sampler="ddim", steps=3, generator=make_generator(2), attributes=a, guidance=1.0 + 1e-9)
    torch.testing.assert_close(plain, guided, rtol=1e-4, atol=1e-4)
