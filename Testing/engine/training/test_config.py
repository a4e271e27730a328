"""training.config: every `--set` value typed by its setting, bad values refused naming the key, --print-config."""

from __future__ import annotations

import json
import typing

import pytest

from lungddpm.cli import main
from lungddpm.errors import ConfigError
from lungddpm.training.config import KNOWN_KEYS, RunConfig, build_run_config

DEFAULTS = RunConfig().to_dict()
HINTS = typing.get_type_hints(RunConfig)


def _text(value):
    """A value as a user types it after --set key=."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# one value per setting that differs from its default, of the setting's type
CHANGED = {"data": ["a", "b"], "output": "runs/x y", "profile": "released", "image_size": 64, "num_channels": 16,
           "num_res_blocks": 2, "channel_mult": [1, 2, 2], "attention_resolutions": [8, 4], "in_channels": 3,
           "patch_spacing_mm": 1.5, "timesteps": 50, "attributes": ["malignancy", "spiculation"], "guidance_scale": 2.5,
           "cond_dropout": 0.2, "init": "released.pt", "init_weights": "model", "lr": 2e-5, "batch_size": 2,
           "grad_accum": 4, "ema_decay": 0.99, "ema_every": 5, "ema_start": 100, "steps": 500, "save_every": 50,
           "seed": 3, "device": "cuda:1", "bf16": True, "grad_checkpoint": True, "workers": 0, "log_every": 5,
           "val_every": 0, "val_timesteps": 2, "preview_every": 0, "preview_steps": 4, "tensorboard": False}


def test_every_setting_has_a_changed_value_here():
    assert sorted(CHANGED) == sorted(KNOWN_KEYS)
    assert all(CHANGED[k] != DEFAULTS[k] for k in KNOWN_KEYS)


@pytest.mark.parametrize("key", KNOWN_KEYS)
def test_every_setting_is_read_from_set_text_by_its_type(key):
    assert getattr(build_run_config(None, [f"{key}={_text(CHANGED[key])}"]), key) == CHANGED[key]
    assert getattr(build_run_config(None, [f"{key}={_text(DEFAULTS[key])}"]), key) == DEFAULTS[key]


@pytest.mark.parametrize("text, value", [("1,2,2", [1, 2, 2]), ("[1,2,2]", [1, 2, 2]), ("[1, 2, 2]", [1, 2, 2]),
                                         ("4", [4]), ("none", None), ("null", None)])
def test_lists_from_commas_or_brackets(text, value):
    assert build_run_config(None, [f"channel_mult={text}"]).channel_mult == value


def test_the_reported_channel_mult_reaches_the_model():
    config = build_run_config(None, ["channel_mult=1,2,2", "image_size=32", "attention_resolutions=[]"])
    assert config.model_config().channel_mult == (1, 2, 2) and config.attention_resolutions == []


def test_names_lists_in_the_forms_the_readme_shows():
    for text in ('["texture","margin"]', "texture,margin", "[texture, margin]"):
        assert build_run_config(None, [f"attributes={text}"]).attributes == ["texture", "margin"]


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("yes", True), ("1", True), ("on", True),
                                         ("false", False), ("no", False), ("0", False), ("off", False)])
def test_booleans(text, value):
    assert build_run_config(None, [f"bf16={text}"]).bf16 is value


def test_numbers_and_text_forms():
    config = build_run_config(None, ["steps=1e3", "lr=1E-5", 'output="runs/a"', "init='x.pt'"])
    assert config.steps == 1000 and isinstance(config.steps, int) and config.lr == 1e-5
    assert config.output == "runs/a" and config.init == "x.pt"


@pytest.mark.parametrize("setting, words", [
    ("channel_mult=1,a", "setting channel_mult = '1,a' must be a list of whole numbers, e.g. 1,2,2 or [1,2,2] or none"),
    ("attention_resolutions=8.5", "setting attention_resolutions = '8.5' must be a list of whole numbers"),
    ("bf16=maybe", "setting bf16 = 'maybe' must be true or false"),
    ("steps=1.5", "setting steps = '1.5' must be a whole number"),
    ("num_channels=sixteen", "setting num_channels = 'sixteen' must be a whole number"),
    ("lr=abc", "setting lr = 'abc' must be a number"),
    ("lr=nan", "setting lr = 'nan' must be a finite number"),
    ("ema_decay=inf", "setting ema_decay = 'inf' must be a finite number"),
    ("in_channels=x", "setting in_channels = 'x' must be a whole number or none"),
    ("patch_spacing_mm=wide", "setting patch_spacing_mm = 'wide' must be a number or none"),
    ("lr", "override 'lr' must look like key=value"),
    ("learning_rate=1", "unknown training settings ['learning_rate']"),
    ("val_timesteps=0", "val_timesteps = 0 must lie in 1 .. timesteps"),
    ("val_every=-1", "val_every must be ≥ 0"),
])
def test_bad_values_are_refused_naming_the_key(setting, words):
    with pytest.raises(ConfigError) as info:
        build_run_config(None, [setting])
    assert words in str(info.value)


def test_file_values_are_typed_like_set_text(tmp_path):
    (tmp_path / "run.toml").write_text('channel_mult = "1,2,2"\nsteps = "40"\nbf16 = "yes"\ndata = "prepared"\n')
    config = build_run_config(tmp_path / "run.toml")
    assert (config.channel_mult, config.steps, config.bf16, config.data) == ([1, 2, 2], 40, True, ["prepared"])
    (tmp_path / "bad.toml").write_text("steps = true\n")
    with pytest.raises(ConfigError, match="setting steps = True must be a whole number"):
        build_run_config(tmp_path / "bad.toml")
    (tmp_path / "bad.yaml").write_text("device: 0\n")
    with pytest.raises(ConfigError, match="setting device = 0 must be text"):
        build_run_config(tmp_path / "bad.yaml")


def test_print_config_shows_the_resolved_settings_and_reads_back_as_a_config_file(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('lr = 2e-5\nsteps = 50\n')
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--set", "channel_mult=1,2,2", "--set", "steps=60",
                 "--steps", "70", "--bf16", "--print-config"]) == 0
    printed = capsys.readouterr().out
    shown = json.loads(printed)
    assert shown == {**DEFAULTS, "lr": 2e-5, "channel_mult": [1, 2, 2], "steps": 70, "bf16": True}
    (tmp_path / "resolved.yaml").write_text(printed)  # JSON is YAML: the printed settings are a config file
    assert build_run_config(tmp_path / "resolved.yaml").to_dict() == shown
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_bad_set_value_is_one_cli_error_line(capsys):
    assert main(["train", "--set", "channel_mult=1,x", "--print-config"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lungddpm: error: setting channel_mult = '1,x'")
