"""The one sampling entry point: the same numbers as each sampler called directly, batches with their own seeds."""

from __future__ import annotations

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import ConfigError, make_generator
from lungddpm.sampling.ancestral import sample_aas
from lungddpm.sampling.options import network_passes
from lungddpm.sampling.sample import sample, sample_batches
from lungddpm.sampling.solvers import sample_aas_solver


def test_sample_runs_the_named_sampler(one_thread):
    model = random_model()
    cond, x_ref = random_layout()
    ddpm = sample(model, cond, x_ref, sampler="ddpm", variant="released", generator=make_generator(3))
    assert torch.equal(ddpm, sample_aas(model, cond, x_ref, variant="released", generator=make_generator(3)))
    for sampler, correction in (("ddim", "clamp"), ("dpmpp3m", "dynamic")):
        fast = sample(model, cond, x_ref, sampler=sampler, steps=4, generator=make_generator(3), x0_correction=correction)
        direct = sample_aas_solver(model, cond, x_ref, sampler, 4, generator=make_generator(3), x0_correction=correction)
        assert torch.equal(fast, direct)
    assert not torch.equal(sample(model, cond, x_ref, sampler="ddim", steps=2, generator=make_generator(3)),
                           sample(model, cond, x_ref, sampler="ddim", steps=4, generator=make_generator(3)))


def test_network_passes_and_refusals():
    assert network_passes("ddpm", None, 250) == 250 and network_passes("dpmpp2m", None, 250) == 3
    assert network_passes("ddim", None, 2) == 2 and network_passes("ddim", 7, 250) == 7
    with pytest.raises(ConfigError, match="runs all 8 steps"):
        sample(random_model(), *random_layout(), sampler="ddpm", steps=3)
    with pytest.raises(ConfigError, match="only for the ddpm sampler"):
        network_passes("ddim", 3, 8, variant="released")
    with pytest.raises(ConfigError, match="choose one of"):
        network_passes("euler", 3, 8)
    for steps in (0, -1):  # not "the default": a count of passes below one is a mistake
        with pytest.raises(ConfigError, match=f"steps={steps} \\(--steps\\): give at least 1"):
            network_passes("dpmpp2m", steps, 250)


def test_sample_batches_gives_each_sample_its_own_seed_and_one_progress_scale(one_thread):
    model = random_model()
    cond, x_ref = random_layout(batch=3)
    calls = []
    together = sample_batches(model, cond, x_ref, [5, 6, 7], 2, sampler="ddim", steps=2,
                              progress=lambda i, n: calls.append((i, n)))
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # two batches of two passes
    alone = [sample(model, cond[n : n + 1], x_ref[n : n + 1], sampler="ddim", steps=2, generator=[make_generator(s)])
             for n, s in enumerate((5, 6, 7))]
    assert (together - torch.cat(alone)).abs().max() < 1e-4  # batched convolutions round differently, nothing more
    assert (alone[0] - alone[1]).abs().max() > 0.1
