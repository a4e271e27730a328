"""Equivalence with the released Lung-DDPM code on ../shared/golden (max abs error ≤ 1e-4)."""

from __future__ import annotations

import pytest
import torch

import lungddpm
from lungddpm.model.diffusion import SCHEDULE_BUFFERS, noise_prediction_loss, schedule_tensors

TOL = 1e-4


@pytest.fixture(scope="module", params=["sdpa", "legacy"])
def tiny_model(request, tiny_checkpoint):
    """The tiny released checkpoint, loaded with each attention implementation."""
    return lungddpm.load_model(tiny_checkpoint, device="cpu", attention=request.param)


def test_fp16_checkpoint_loads_as_float32_with_released_config(tiny_model, tiny_reference):
    cfg = tiny_model.config
    want = tiny_reference["config"]
    assert (cfg.image_size, cfg.num_channels, cfg.num_res_blocks, cfg.timesteps) == (32, 32, 1, 20)
    assert cfg.image_size == want["image_size"] and cfg.timesteps == want["timesteps"]
    assert list(cfg.channel_mult) == list(want["channel_mult"]) and cfg.in_channels == want["num_class_labels"]
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    assert not tiny_model.training
    assert tiny_model.source.format == "released" and tiny_model.source.step == 100000


def test_network_output_matches_released(tiny_model, tiny_reference):
    f = tiny_reference["forward"]
    with torch.no_grad():
        for i, t in enumerate(f["t"]):
            eps = tiny_model.predict_noise(f["x_t"], f["cond"], t.reshape(1))
            err = (eps - f["eps"][i : i + 1]).abs().max().item()
            assert err <= TOL, f"t={int(t)}: max abs error {err}"


def test_schedule_buffers_match_released(tiny_reference, tiny_checkpoint):
    ours = schedule_tensors(20)
    stored = torch.load(tiny_checkpoint, weights_only=True)["ema"]
    for name in SCHEDULE_BUFFERS:
        assert (ours[name] - tiny_reference["schedule"][name]).abs().max().item() <= TOL * 1e-2, name
        assert torch.equal(ours[name], stored[name]), name


def test_loss_matches_released(tiny_model, tiny_reference):
    L = tiny_reference["loss"]
    with torch.no_grad():
        x_t = tiny_model.diffusion.q_sample(L["x_start"], L["t"], L["noise"])
        loss = noise_prediction_loss(tiny_model.predict_noise(x_t, L["cond"], L["t"]), L["noise"])
    assert abs(loss.item() - L["loss"].item()) <= TOL


def test_released_aas_loop_reproduces_recorded_sample(tiny_model, tiny_reference):
    a = tiny_reference["aas"]
    steps = []
    out = lungddpm.sample_aas(
        tiny_model, a["cond"], a["x_ref"], variant="released", blend_from=None, draws=list(a["draws"]),
        progress=lambda i, n: steps.append((i, n)),
    )
    err = (out - a["sample"]).abs().max().item()
    assert err <= TOL, f"released AAS loop: max abs error {err}"
    assert steps == [(i, 20) for i in range(1, 21)]


def test_sdpa_matches_legacy_attention(tiny_checkpoint, tiny_reference):
    f = tiny_reference["forward"]
    legacy = lungddpm.load_model(tiny_checkpoint, attention="legacy")
    sdpa = lungddpm.load_model(tiny_checkpoint, attention="sdpa")
    t = f["t"][1:2]
    with torch.no_grad():
        diff = (legacy.predict_noise(f["x_t"], f["cond"], t) - sdpa.predict_noise(f["x_t"], f["cond"], t)).abs().max()
    assert diff.item() <= 1e-5
