"""Single-process training (Algorithm 1): the loss falls, EMA follows the released rule, checkpoints reload."""

from __future__ import annotations

import itertools

import torch

from helpers import random_layout, small_config
from lungddpm import LungDDPM, load_model
from lungddpm.training.objective import TrainConfig, Trainer, denoising_loss, ema_update


def _fixed_batches(seed=0):
    cond, x_ref = random_layout(seed=seed)
    return itertools.repeat((x_ref, cond))


def _eval_loss(model, seed=123):
    cond, x_ref = random_layout()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(denoising_loss(model.denoise_fn, model.diffusion, x_ref, cond, g).item() for _ in range(8)) / 8


def test_short_run_lowers_loss_and_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    model = LungDDPM(small_config())
    cfg = TrainConfig(lr=2e-3, grad_accum=2, ema_every=1, ema_start=10, save_every=25, steps=25, output_dir=str(tmp_path))
    trainer = Trainer(model, _fixed_batches(), cfg)
    before = _eval_loss(model)
    logs = []
    losses = trainer.fit(log=logs.append)
    after = _eval_loss(model)
    assert len(losses) == 25 and logs[-1]["step"] == 25
    assert after < 0.7 * before, (before, after)
    path = tmp_path / "step-0000025.pt"
    assert path.is_file()
    cond, x_ref = random_layout(seed=5)
    t = torch.tensor([4])
    ema_loaded, raw_loaded = load_model(path), load_model(path, weights="model")
    with torch.no_grad():
        assert torch.equal(raw_loaded.predict_noise(x_ref, cond, t), model.predict_noise(x_ref, cond, t))
        expected = trainer.ema(torch.cat([x_ref, cond], 1), t)
        assert torch.equal(ema_loaded.predict_noise(x_ref, cond, t), expected)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 25 and "optimizer" in saved and saved["train_config"]["lr"] == 2e-3


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ema_is_a_copy_before_start_and_an_average_after(tmp_path):
    torch.manual_seed(0)
    model = LungDDPM(small_config())
    cfg = TrainConfig(lr=1e-3, grad_accum=1, ema_every=10, ema_start=20, output_dir=str(tmp_path))
    trainer = Trainer(model, _fixed_batches(), cfg)
    trainer.fit(11)  # EMA refreshed at steps 0 and 10, both before ema_start: plain copies
    after_step_10 = _weights(model.denoise_fn)
    assert all(torch.equal(trainer.ema.state_dict()[k], v) for k, v in after_step_10.items())
    trainer.fit(1)  # step 11: no EMA update, the model moves on
    assert any(not torch.equal(model.denoise_fn.state_dict()[k], v) for k, v in after_step_10.items())
    assert all(torch.equal(trainer.ema.state_dict()[k], v) for k, v in after_step_10.items())
    trainer.fit(9)  # steps 12..20; step 20 >= ema_start: exponential average
    after_step_20 = _weights(model.denoise_fn)
    ema = trainer.ema.state_dict()
    name = "out.2.weight"
    expected = 0.995 * after_step_10[name] + 0.005 * after_step_20[name]
    assert torch.allclose(ema[name], expected, atol=1e-7)
    assert not torch.equal(ema[name], after_step_20[name])


def test_ema_update_formula():
    net, avg = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    old = avg.weight.detach().clone()
    ema_update(avg, net, 0.995)
    assert torch.allclose(avg.weight, 0.995 * old + 0.005 * net.weight)
