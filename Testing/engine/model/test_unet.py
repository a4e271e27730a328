"""The U-Net: released 128³ state-dict layout, Lung-DDPM+ configuration, configuration errors."""

from __future__ import annotations

import json

import pytest
import torch

from lungddpm import ConfigError, InputError, LungDDPM, ModelConfig
from lungddpm.model.checkpoints import released_state_dict
from lungddpm.model.config import released_lung_ddpm, released_lung_ddpm_plus
from lungddpm.model.diffusion import SCHEDULE_BUFFERS


def test_released_128_state_dict_keys_and_shapes(golden_dir):
    expected = json.loads((golden_dir / "released-128-state-dict-shapes.json").read_text())
    model = LungDDPM(released_lung_ddpm(128))
    ours = {k: list(v.shape) for k, v in released_state_dict(model).items()}
    unet_keys = [k for k in expected if k.startswith("denoise_fn.")]
    assert len(unet_keys) == 246 and len(expected) == 259
    assert list(ours) == list(expected)  # same names, same order
    assert ours == expected
    n_params = sum(p.numel() for p in model.denoise_fn.parameters())
    assert abs(n_params / 1e6 - 40.2) < 0.1, n_params  # "about 40.2 M parameters at 128³"


def test_lung_ddpm_plus_configuration_builds_and_runs():
    cfg = released_lung_ddpm_plus(num_channels=32, timesteps=10)
    assert cfg.in_channels == 2 and cfg.cond_channels == 1 and cfg.channel_mult == (1, 2, 3, 4)
    assert cfg.attention_ds == (4,)
    model = LungDDPM(cfg).eval()
    assert any(".1.qkv." in k for k in model.denoise_fn.state_dict() if k.startswith("input_blocks.5."))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        eps = model.predict_noise(x, torch.ones(1, 1, 16, 16, 16), torch.tensor([3]))
    assert eps.shape == x.shape


def test_schedule_buffers_listed_in_released_order():
    assert len(SCHEDULE_BUFFERS) == 13


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(image_size=100), "divisible"),
        (dict(num_channels=48), "multiples of 32"),
        (dict(attention_resolutions=(24,)), "power of two"),
        (dict(in_channels=1), "in_channels"),
        (dict(schedule="linear"), "cosine"),
        (dict(attention="flash"), "sdpa"),
    ],
)
def test_bad_configuration_is_named(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**kwargs)


def test_config_round_trips_through_plain_dict():
    cfg = released_lung_ddpm(64, num_channels=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_predict_noise_rejects_wrong_shapes():
    model = LungDDPM(ModelConfig(image_size=16, num_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), timesteps=4))
    x = torch.zeros(1, 1, 16, 16, 16)
    with pytest.raises(InputError, match="layout tensor"):
        model.predict_noise(x, torch.zeros(1, 1, 16, 16, 16), torch.tensor([0]))
    with pytest.raises(InputError, match="divisible"):
        model.predict_noise(torch.zeros(1, 1, 15, 16, 16), torch.zeros(1, 2, 15, 16, 16), torch.tensor([0]))
    with pytest.raises(InputError, match="timesteps"):
        model.predict_noise(x, torch.zeros(1, 2, 16, 16, 16), torch.tensor([0, 1]))
