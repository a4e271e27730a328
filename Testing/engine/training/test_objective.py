"""Alg. 1 through the one trainer: the loss falls on prepared data, the EMA follows the released rule, checkpoints reload."""

from __future__ import annotations

import json

import torch

from helpers import TINY_TRAIN
from lungddpm import load_model
from lungddpm.model.checkpoints import read_checkpoint
from lungddpm.training.config import build_run_config
from lungddpm.training.data import PreparedCases, load_cases
from lungddpm.training.distributed import DistContext
from lungddpm.training.objective import ema_update, loss_at, refresh_ema
from lungddpm.training.run import LATEST, TrainingRun


def _run(prepared, output, **settings) -> TrainingRun:
    overrides = [TINY_TRAIN[i + 1] for i in range(0, len(TINY_TRAIN), 2)] + [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    return TrainingRun(build_run_config(None, overrides, data=[str(prepared)], output=str(output), workers=0), DistContext())


def _fixed_loss(model, prepared) -> float:
    """The loss over every prepared case at fixed t and ε (the same numbers before and after training)."""
    cases, _ = load_cases([str(prepared)])
    g = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for n in range(len(cases)):
            x, cond, _, _ = PreparedCases(cases)[(n, 0)]
            t = torch.randint(0, model.config.timesteps, (4,), generator=g)
            noise = torch.randn((4, *x.shape), generator=g)
            total += loss_at(model.denoise_fn, model.diffusion, x[None].expand(4, -1, -1, -1, -1), cond[None].expand(4, -1, -1, -1, -1),
                             t, noise).item()
    return total / len(cases)


def test_short_run_lowers_the_loss_and_its_checkpoint_reloads(prepared16, tmp_path, one_thread):
    run = _run(prepared16, tmp_path, lr=2e-3, grad_accum=2, steps=25, save_every=25, ema_start=10)
    before = _fixed_loss(run.model, prepared16)
    losses = run.fit()
    after = _fixed_loss(run.model, prepared16)
    assert len(losses) == 25 and run.step == 25
    assert after < 0.8 * before, (before, after)
    latest = tmp_path / LATEST
    cond = PreparedCases(load_cases([str(prepared16)])[0])[(0, 0)][1][None]
    x = torch.randn((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(5))
    t = torch.tensor([4])
    with torch.no_grad():
        assert torch.equal(load_model(latest, weights="model").predict_noise(x, cond, t), run.model.eval().predict_noise(x, cond, t))
        assert torch.equal(load_model(latest).predict_noise(x, cond, t), run.ema(torch.cat([x, cond], 1), t))
    saved = read_checkpoint(latest)
    assert saved["step"] == 25 and "optimizer" in saved and saved["run"]["config"]["lr"] == 2e-3


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ema_is_a_copy_before_start_and_an_average_after():
    torch.manual_seed(0)
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    refresh_ema(ema, net, step=9, ema_start=10, decay=0.995)  # before ema_start: a plain copy
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in _weights(net).items())
    copied = _weights(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    refresh_ema(ema, net, step=10, ema_start=10, decay=0.995)  # from ema_start on: the exponential average
    assert torch.allclose(ema.weight, 0.995 * copied["weight"] + 0.005 * net.weight, atol=1e-7)
    assert not torch.equal(ema.weight, net.weight)


def test_ema_update_formula():
    net, avg = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    old = avg.weight.detach().clone()
    ema_update(avg, net, 0.995)
    assert torch.allclose(avg.weight, 0.995 * old + 0.005 * net.weight)
