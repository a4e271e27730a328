"""Model files: released-format loading, the project format, and clear errors for wrong files."""

from __future__ import annotations

import argparse

import pytest
import torch

from helpers import random_layout, random_model
from lungddpm import CheckpointError, DeviceError, load_model, save_checkpoint
from lungddpm.model.checkpoints import file_sha256, released_state_dict
from lungddpm.runtime.device import resolve_device


def _released_file(tmp_path, model, name="released.pt", **edits):
    sd = released_state_dict(model)
    sd.update(edits)
    path = tmp_path / name
    torch.save({"step": 5, "model": sd, "ema": sd}, path)
    return path


def _outputs(model, seed=0):
    cond, x_ref = random_layout(seed=seed)
    with torch.no_grad():
        return model.predict_noise(x_ref, cond, torch.tensor([3]))


def test_released_format_round_trip_infers_configuration(tmp_path):
    model = random_model()  # attention at 16/8 = ds 2: the released convention (attention at size/16) reads it as 32³
    path = _released_file(tmp_path, model)
    assert load_model(path).config.image_size == 32
    loaded = load_model(path, image_size=16)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert loaded.source.format == "released" and loaded.source.step == 5


def test_project_format_round_trip(tmp_path):
    model = random_model(seed=1, attention_resolutions=(16, 8), num_heads=2)
    ema = random_model(seed=2, attention_resolutions=(16, 8), num_heads=2).denoise_fn
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, ema=ema, step=12)
    ema_loaded = load_model(path)
    raw_loaded = load_model(path, weights="model")
    assert ema_loaded.config == model.config and ema_loaded.config.num_heads == 2
    assert torch.equal(_outputs(raw_loaded), _outputs(model))
    assert not torch.equal(_outputs(ema_loaded), _outputs(model))
    assert ema_loaded.source.sha256 == file_sha256(path) and ema_loaded.source.step == 12
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # atomic write leaves no temporary file


def test_module_prefix_from_data_parallel_is_accepted(tmp_path):
    model = random_model()
    sd = {"module." + k: v for k, v in released_state_dict(model).items()}
    path = tmp_path / "dp.pt"
    torch.save({"step": 1, "model": sd, "ema": sd}, path)
    assert torch.equal(_outputs(load_model(path)), _outputs(model))


def test_random_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.pt"
    torch.save({"weights": torch.randn(3), "epoch": 4}, path)
    with pytest.raises(CheckpointError, match="not a Lung-DDPM checkpoint"):
        load_model(path)


def test_truncated_file_is_named(tmp_path, tiny_checkpoint):
    path = tmp_path / "truncated.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated.pt could not be read"):
        load_model(path)


def test_text_file_and_missing_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="could not be read: it is a text file") as error:
        load_model(text)
    assert "weights_only" not in str(error.value)  # torch's advice would execute code; never the fix here
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt could not be read: the file is empty"):
        load_model(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "absent.pt")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"ema": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="execute code"):
        load_model(path)


def test_mismatched_shapes_name_the_key(tmp_path):
    model = random_model()
    key = "denoise_fn.middle_block.0.in_layers.2.weight"
    bad = released_state_dict(model)[key][:, :32].clone()
    with pytest.raises(CheckpointError, match="in_layers.2.weight"):
        load_model(_released_file(tmp_path, model, **{key: bad}))


def test_missing_tensor_is_named(tmp_path):
    model = random_model()
    sd = released_state_dict(model)
    del sd["denoise_fn.output_blocks.1.0.out_layers.3.weight"]
    path = tmp_path / "missing.pt"
    torch.save({"step": 0, "model": sd, "ema": sd}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(path)


def test_other_schedule_is_refused(tmp_path):
    model = random_model()
    path = _released_file(tmp_path, model, betas=torch.linspace(1e-4, 0.02, model.config.timesteps))
    with pytest.raises(CheckpointError, match="betas"):
        load_model(path)


def test_requested_configuration_must_match(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="image_size=32, but 128 was requested"):
        load_model(tiny_checkpoint, expect={"image_size": 128})
    assert load_model(tiny_checkpoint, expect={"image_size": 32, "in_channels": 3}).config.timesteps == 20


def test_checkpoint_never_modified_by_loading(tiny_checkpoint):
    before = file_sha256(tiny_checkpoint)
    load_model(tiny_checkpoint)
    assert file_sha256(tiny_checkpoint) == before


def test_device_errors_name_the_alternative():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("fmt, bad", [("lungddpm", float("nan")), ("released", float("inf"))])
def test_weights_that_are_not_finite_are_refused_at_load(tmp_path, fmt, bad):
    model = random_model()
    path = tmp_path / "diverged.pt"
    if fmt == "lungddpm":
        save_checkpoint(path, model)
        checkpoint, key = torch.load(path, weights_only=True), "out.2.weight"
    else:
        checkpoint, key = {"step": 5, "model": released_state_dict(model), "ema": released_state_dict(model)}, "denoise_fn.out.2.weight"
    broken = checkpoint["ema"][key].clone()  # the file's model and EMA weights share storage
    broken.view(-1)[:4] = bad
    checkpoint["ema"][key] = broken
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"diverged.pt: 4 weight values in 1 tensor\(s\) are NaN or infinite "
                                              r"\(e.g. out.2.weight\)"):
        load_model(path)
    load_model(path, weights="model")  # the file's other weights are finite


def test_bundled_models_are_format_version_1_and_load():
    from lungddpm.cli import DEMO_NODULES_NAME, _model_path

    for name in ("demo", DEMO_NODULES_NAME):
        path = _model_path(name)
        assert torch.load(path, map_location="cpu", weights_only=True)["format_version"] == 1  # as written to disk
        assert load_model(path).source.format == "lungddpm"


@pytest.mark.parametrize("version", [0, 2])
def test_other_project_format_versions_are_refused(tmp_path, version):
    path = save_checkpoint(tmp_path / "m.pt", random_model())
    obj = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**obj, "format_version": version}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=f"has format version {version}; this lungddpm reads version 1"):
        load_model(tmp_path / "other.pt")


def test_an_unusable_project_configuration_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", random_model())
    obj = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**obj, "config": {**obj["config"], "image_size": "large"}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="has an unusable configuration"):
        load_model(tmp_path / "bad.pt")


def test_released_layouts_need_as_many_blocks_per_level(tmp_path):
    model = random_model(num_res_blocks=2)
    loaded = load_model(_released_file(tmp_path, model), image_size=16)
    assert loaded.config.channel_mult == model.config.channel_mult
    sd = {k: v for k, v in released_state_dict(model).items() if not k.startswith("denoise_fn.input_blocks.2.")}
    torch.save({"step": 0, "model": sd, "ema": sd}, tmp_path / "uneven.pt")
    with pytest.raises(CheckpointError, match=r"residual blocks per level \[1, 2\] do not form a released U-Net layout"):
        load_model(tmp_path / "uneven.pt")


def test_mismatched_keys_are_listed_by_kind(tmp_path):
    model = random_model()
    sd = dict(released_state_dict(model))
    sd["denoise_fn.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. \['extra\.weight'\]\)$"):
        load_model(_released_file(tmp_path, model, **{"denoise_fn.extra.weight": torch.zeros(1)}))
    del sd["denoise_fn.extra.weight"], sd["denoise_fn.out.2.bias"]
    torch.save({"step": 0, "model": sd, "ema": sd}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError) as refused:
        load_model(tmp_path / "missing.pt")
    assert "1 missing" in str(refused.value) and "unexpected" not in str(refused.value)
