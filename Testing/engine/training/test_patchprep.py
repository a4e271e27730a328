"""Lung-DDPM+ training data: `prepare --profile released-patch` cubes equal the sampling pre-processing; train; synthesise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import small_config
from lungddpm import ModelConfig, load_model, synthesize
from lungddpm.cli import main
from lungddpm.model.config import released_lung_ddpm_plus
from lungddpm.training.data import PreparedCases, load_cases
from lungddpm.errors import ConfigError, InputError
from lungddpm.layout.labels import NODULE
from lungddpm.synthesis.patches import encode_patch, plan_patches
from lungddpm.demo.phantom import make_phantom
from lungddpm.training.prepare import prepare_dataset
from lungddpm.training.runlog import read_log
from lungddpm.training.config import build_run_config
from lungddpm.io.volume import read_volume, write_volume

TINY_PATCH = ["--set", "profile=released-patch", "--set", "image_size=16", "--set", "channel_mult=[1,2]",
              "--set", "attention_resolutions=[8]", "--set", "num_channels=32", "--set", "timesteps=8",
              "--set", "lr=1e-3", "--set", "log_every=1", "--set", "preview_every=0", "--set", "tensorboard=false",
              "--set", "workers=0", "--set", "grad_accum=1"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Case folders: 'duo' (2 nodules), 'solo' (1 nodule), 'clear' (no nodule annotation); and their phantoms."""
    root = tmp_path_factory.mktemp("patch-phantoms")
    made = {"duo": make_phantom(seed=1, nodules=2), "solo": make_phantom(seed=0, nodules=1), "clear": make_phantom(seed=4)}
    for name, ph in made.items():
        write_volume(ph.ct, root / name / "ct.nrrd")
        if name != "clear":
            write_volume(ph.layout.with_array((ph.layout.array == NODULE).astype(np.uint8)), root / name / "nodules.nrrd")
    return root, made


@pytest.fixture(scope="module")
def prepared(phantoms, tmp_path_factory):
    """The phantoms prepared as 16³ nodule cubes of the CT's own voxels, half the patients in validation."""
    out = tmp_path_factory.mktemp("patch-prepared")
    summary = prepare_dataset([phantoms[0]], out, profile="released-patch", size=16, val_fraction=0.5, seed=0)
    return out, summary


def _released_cube(ct: np.ndarray, start_ijk, size: int) -> np.ndarray:
    """Independent reference: the cube of CT voxels at an integer start, in file axes (i, k, j), min-max per i."""
    i, j, k = (int(v) for v in start_ijk)
    cube = np.transpose(ct[k:k + size, j:j + size, i:i + size].astype(np.float64), (2, 0, 1))
    lo, hi = cube.min(axis=(1, 2), keepdims=True), cube.max(axis=(1, 2), keepdims=True)
    return (cube - lo) / (hi - lo) * 2 - 1


def test_prepare_writes_one_cube_per_nodule_as_sampling_encodes_it(phantoms, prepared):
    root, made = phantoms
    out, summary = prepared
    assert summary["prepared"] == 2 and summary["samples"] == 3 and summary["skipped"] == 1
    (skip,) = json.loads((out / "skipped.json").read_text())
    assert skip["case_id"] == "clear" and skip["reason"].startswith("no nodule")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["space"] == {"profile": "released-patch", "size": 16, "cond_channels": 1, "patch_spacing_mm": None}
    cubes = manifest["cases"]
    assert [(c["case_id"], c["cube"]) for c in cubes] == [("duo", 0), ("duo", 1), ("solo", 0)]
    assert {c["case_id"]: c["split"] for c in cubes} in ({"duo": "train", "solo": "validation"},
                                                           {"duo": "validation", "solo": "train"})
    assert len({c["split"] for c in cubes if c["case_id"] == "duo"}) == 1  # a patient's cubes stay together
    for name in ("duo", "solo"):
        ph = made[name]
        ct = read_volume(root / name / "ct.nrrd")
        patches, components = plan_patches(ph.layout, 16, None)
        records = [c for c in cubes if c["case_id"] == name]
        assert len(records) == len(patches) == len(ph.nodules)
        for record, patch in zip(records, patches):
            folder = out / record["folder"]
            x, cond = np.load(folder / "x.npy"), np.load(folder / "cond.npy")
            space = encode_patch(ct, ph.layout, patch)
            assert x.shape == cond.shape == (1, 16, 16, 16)
            assert np.array_equal(x, space.x_ref[0].numpy()) and np.array_equal(cond, space.cond[0].numpy().astype(np.float16))
            assert record["cube_start_ijk"] == patch.start.tolist()
            assert np.allclose(x[0], _released_cube(ct.array, patch.start, 16), atol=1e-6)
            (label,) = patch.components
            i, j, k = patch.start.astype(int)
            inside = components[k:k + 16, j:j + 16, i:i + 16]
            own = inside == label
            assert own.sum() == (components == label).sum()  # the cube holds its whole nodule
            assert np.array_equal(cond[0] > 0, np.transpose(inside > 0, (2, 0, 1)))  # and every nodule voxel it covers
            truth = (components == label).sum() * np.prod(ct.spacing)
            assert record["nodule_count"] == 1 and record["case_nodule_count"] == len(ph.nodules)
            assert record["nodule_diameters_mm"][0] == pytest.approx((6 * truth / np.pi) ** (1 / 3), abs=0.01)
            assert record["model_spacing_mm"] == record["spacing_mm"] == [2.8, 2.8, 5.0]
            assert read_volume(folder / "layout.nii.gz").array.sum() == NODULE * (inside > 0).sum()
            (nodule,) = record["nodules"]  # the cube's nodule: its component, centre in the CT's mm, its size
            assert nodule["component"] == label and nodule["attributes"] == {"diameter_mm": record["nodule_diameters_mm"][0]}
            drawn = min(np.linalg.norm(np.subtract(nodule["center_lps_mm"], n["center_lps_mm"])) for n in ph.nodules)
            assert drawn < 2.5  # mm: half a slice from the phantom's nodule centre
    csv_header = (out / "manifest.csv").read_text().splitlines()[0]
    assert csv_header.startswith("case_id,patient_id,split,folder,cube,cube_start_ijk,case_nodule_count,")
    nodule_rows = (out / "nodules.csv").read_text().splitlines()
    assert nodule_rows[0].startswith("case_id,cube,split,folder,component,center_lps_mm,diameter_mm,") and len(nodule_rows) == 4


def test_prepare_patch_spacing_resamples_the_cube(phantoms, tmp_path):
    root, made = phantoms
    out = tmp_path / "iso"
    assert main(["prepare", "--input", str(root / "solo"), "--output", str(out), "--profile", "released-patch",
                 "--size", "16", "--patch-spacing", "3.5", "--val-fraction", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (record,) = manifest["cases"]
    assert manifest["space"]["patch_spacing_mm"] == 3.5 and record["model_spacing_mm"] == [3.5, 3.5, 3.5]
    (patch,), _ = plan_patches(made["solo"].layout, 16, 3.5)
    space = encode_patch(read_volume(root / "solo" / "ct.nrrd"), made["solo"].layout, patch)
    assert np.array_equal(np.load(out / record["folder"] / "x.npy"), space.x_ref[0].numpy())
    with pytest.raises(InputError, match="one layout channel .* omit --cond-channels"):
        prepare_dataset([root / "solo"], tmp_path / "bad", profile="released-patch", size=16, cond_channels=2)
    with pytest.raises(InputError, match="for --profile released-patch/native-patch only"):
        prepare_dataset([root / "solo"], tmp_path / "bad", profile="native", size=16, patch_spacing_mm=2.0)


def test_prepare_native_patch_cubes_in_the_fixed_hu_window(phantoms, tmp_path):
    root, made = phantoms
    out = tmp_path / "windowed"
    assert main(["prepare", "--input", str(root / "solo"), "--output", str(out), "--profile", "native-patch",
                 "--size", "16", "--val-fraction", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (record,) = manifest["cases"]
    assert manifest["space"]["profile"] == "native-patch"
    i, j, k = (int(v) for v in record["cube_start_ijk"])
    ct = read_volume(root / "solo" / "ct.nrrd").array.astype(np.float64)
    cube = np.transpose(ct[k:k + 16, j:j + 16, i:i + 16], (2, 0, 1))  # independent: the CT's voxels in file axes
    expected = (np.clip(cube, -1000, 500) + 1000) / 1500 * 2 - 1
    np.testing.assert_allclose(np.load(out / record["folder"] / "x.npy")[0], expected, atol=1e-6)
    hu = read_volume(out / record["folder"] / "ct.nii.gz").array
    np.testing.assert_allclose(hu, np.clip(ct[k:k + 16, j:j + 16, i:i + 16], -1000, 500), atol=0.01)


def test_train_a_patch_model_then_synthesise_with_it(phantoms, prepared, tmp_path):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        assert main(["train", "--data", str(prepared[0]), "--output", str(out), "--steps", "3", "--threads", "1",
                     *TINY_PATCH]) == 0
        train = [r for r in read_log(out) if "loss" in r]  # the validation split's records have val_loss instead
        assert [r["step"] for r in train] == [1, 2, 3] and len({round(r["loss"], 5) for r in train}) == 3
        assert [r["step"] for r in read_log(out) if "val_loss" in r] == [3]  # validation at the last step
        model = load_model(out / "latest.pt", weights="model")
        c = model.config
        assert (c.profile, c.image_size, c.in_channels, c.cond_channels, c.patch_spacing_mm) == ("released-patch", 16, 2, 1, None)
        torch.manual_seed(0)  # the run's initial weights (seed 0): training moved them
        initial = type(model)(c).denoise_fn.state_dict()
        assert any(not torch.equal(v, initial[k]) for k, v in model.denoise_fn.state_dict().items())
        ph = make_phantom(seed=2, nodules=1)
        result = synthesize(ph.ct, ph.layout, out / "latest.pt", sampler="ddim", steps=2, device="cpu", seed=1)
        changed = result.image.array != ph.ct.array
        nodule = ph.layout.array == NODULE
        assert result.metadata["patches"] == "1" and result.metadata["profile"] == "released-patch"
        assert not (changed & ~nodule).any() and changed[nodule].mean() > 0.5  # only nodule voxels are synthesised
    finally:
        torch.set_num_threads(before)


def test_patch_data_and_models_must_match(prepared, tmp_path, capsys):
    cases, space = load_cases([str(prepared[0])], "train")
    x, cond, _, _ = PreparedCases(cases)[(0, 0)]
    assert space["cond_channels"] == 1 and x.shape == cond.shape == (1, 16, 16, 16) and x.dtype == cond.dtype == torch.float32
    native = [a.replace("profile=released-patch", "profile=native") for a in TINY_PATCH]
    assert main(["train", "--data", str(prepared[0]), "--output", str(tmp_path / "a"), "--steps", "1", *native]) == 2
    assert "prepared with profile = 'released-patch' but the model needs 'native'" in capsys.readouterr().err
    assert main(["train", "--data", str(prepared[0]), "--output", str(tmp_path / "b"), "--steps", "1", *TINY_PATCH,
                 "--set", "patch_spacing_mm=2"]) == 2
    err = capsys.readouterr().err
    assert "prepared with patch_spacing_mm = None but the model needs 2.0" in err and "--patch-spacing 2`" in err
    with pytest.raises(ConfigError, match="one layout channel .* in_channels must be out_channels \\+ 1 = 2, not 3"):
        small_config(profile="released-patch", in_channels=3)
    assert ModelConfig.from_dict(small_config(profile="released-patch", in_channels=2).to_dict()).cond_channels == 1
    plus = build_run_config(None, ["profile=released-patch", "image_size=64"]).model_config()
    assert plus.to_dict() == released_lung_ddpm_plus().to_dict()  # the run defaults give the released Lung-DDPM+ network
