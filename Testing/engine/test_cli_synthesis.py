"""`lungddpm synthesize`, `lung-mask`, `add-nodule` as a user runs them: real processes, files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from lungddpm.layout.labels import NODULE
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import Volume, index_to_physical, read_volume, same_grid, write_volume


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lungddpm", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    ph = make_phantom(phantom_grid((96, 96, 48), (3.5, 3.5, 6.0)), seed=2, nodules=1)
    return write_volume(ph.ct, folder / "ct.nrrd"), write_volume(ph.layout, folder / "layout.nrrd"), ph


def test_synthesize_end_to_end_with_released_checkpoint(shared_dir, tiny_checkpoint, tmp_path):
    data = shared_dir / "data" / "lung-pet-ct-dx-A0001"
    out = tmp_path / "synthetic.nrrd"
    res = _run("synthesize", "--reference", data / "ct.nii.gz", "--layout", data / "layout-crude.nii.gz",
               "--model", tiny_checkpoint, "--output", out, "--seed", 3, "--device", "cpu", "--progress", "json",
               "--threads", 1, "--sampler", "ddpm")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    steps = [r for r in lines if "step" in r]
    assert [r["step"] for r in steps] == list(range(0, 21)) and all(r["total"] == 20 for r in steps)
    assert steps[-1]["eta_s"] == 0 and all(r["elapsed_s"] >= 0 for r in steps)
    assert lines[-1]["event"] == "done" and lines[-1]["image"] == str(out)
    ct, layout, syn = read_volume(data / "ct.nii.gz"), read_volume(data / "layout-crude.nii.gz"), read_volume(out)
    assert same_grid(syn, ct, tol=1e-3) and syn.array.dtype == ct.array.dtype
    region = layout.array > 0
    assert np.array_equal(syn.array[~region], ct.array[~region])
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert meta["SYNTHETIC"] == "true" and meta["seed"] == "3" and meta["steps"] == "20" and meta["sampler"] == "ddpm"
    assert meta["profile"] == "released" and len(meta["model_sha256"]) == 64 and meta["lungddpm_version"]
    assert meta["reference"] == "ct.nii.gz" and meta["layout"] == "layout-crude.nii.gz"  # names, never local paths
    assert np.array_equal(read_volume(tmp_path / "synthetic_labels.nrrd").array, layout.array)


def _bad_layouts(ct: Volume, layout: Volume) -> dict[str, tuple[Volume, Volume, str]]:
    """Each validation error: (reference, layout, words the message must contain)."""
    far = layout.array.copy()
    far[far == NODULE] = 1
    far[:3, :3, :3] = NODULE  # a corner of the image: outside the body
    nan_ct = ct.with_array(ct.array.astype(np.float32))
    nan_ct.array[5, 5, 5] = np.nan
    shifted = Volume(layout.array, tuple(np.add(layout.origin, (7.0, 0, 0))), layout.spacing, layout.direction)
    return {
        "grids differ": (ct, shifted, "origin"),
        "no lung": (ct, layout.with_array(np.zeros_like(layout.array)), "no lung"),
        "labels": (ct, layout.with_array(np.where(layout.array == 1, 5, layout.array).astype(np.uint8)), "labels [5]"),
        "nodule outside": (ct, layout.with_array(far), "outside the lung"),
        "nan": (nan_ct, layout, "finite"),
        "not ct": (ct.with_array(np.clip(ct.array, 0, 255).astype(np.uint8)), layout, "CT"),
    }


@pytest.mark.parametrize("case", ["grids differ", "no lung", "labels", "nodule outside", "nan", "not ct"])
def test_bad_input_names_the_problem_and_writes_nothing(case, phantom_files, tiny_checkpoint, tmp_path):
    _, _, ph = phantom_files
    ct, layout, words = _bad_layouts(ph.ct, ph.layout)[case]
    ref = tmp_path / "in" / "ref.nrrd"
    ref.parent.mkdir()
    sitk.WriteImage(ct.to_sitk(), str(ref))  # SimpleITK itself: write_volume refuses to write NaN
    lay = write_volume(layout, tmp_path / "in" / "lay.nrrd")
    out_dir = tmp_path / "out"
    res = _run("synthesize", "--reference", ref, "--layout", lay, "--model", tiny_checkpoint, "--output", out_dir / "s.nrrd")
    assert res.returncode == 2, res.stdout + res.stderr
    assert words.lower() in res.stderr.lower(), res.stderr
    assert "Traceback" not in res.stderr
    assert not out_dir.exists()


def test_output_never_overwrites_an_input(phantom_files, tiny_checkpoint):
    ref, lay, _ = phantom_files
    before = ref.read_bytes()
    res = _run("synthesize", "--reference", ref, "--layout", lay, "--model", tiny_checkpoint, "--output", ref)
    assert res.returncode == 2 and "refusing to overwrite" in res.stderr
    assert ref.read_bytes() == before


def test_wrong_checkpoint_is_named(phantom_files, tmp_path):
    ref, lay, _ = phantom_files
    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    res = _run("synthesize", "--reference", ref, "--layout", lay, "--model", bogus, "--output", tmp_path / "o.nrrd")
    assert res.returncode == 2 and "model.pt" in res.stderr and not (tmp_path / "o.nrrd").exists()


def test_lung_mask_and_add_nodule_commands(phantom_files, tmp_path):
    ref, _, ph = phantom_files
    mask_path = tmp_path / "mask.nrrd"
    res = _run("lung-mask", ref, "--output", mask_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    mask = read_volume(mask_path)
    truth = ph.layout.array > 0
    dice = 2 * (truth & (mask.array > 0)).sum() / (truth.sum() + (mask.array > 0).sum())
    assert dice > 0.9 and 2.0 < report["lung_volume_l"] < 9.0
    centre_lps = (-70.0, 10.0, 20.0)
    ras = (-centre_lps[0], -centre_lps[1], centre_lps[2])
    out = tmp_path / "layout.nrrd"
    res = _run("add-nodule", "--layout", mask_path, "--output", out, "--center", *ras, "--ras", "--diameter", 15)
    assert res.returncode == 0, res.stderr
    lay = read_volume(out)
    centroid = index_to_physical(lay, np.argwhere(lay.array == NODULE)[:, ::-1].astype(float)).mean(0)
    assert np.linalg.norm(centroid - np.array(centre_lps)) <= max(lay.spacing)
    res = _run("add-nodule", "--layout", out, "--output", tmp_path / "more.nrrd", "--random", 2, "--seed", 1)
    assert res.returncode == 0 and len(json.loads(res.stdout)["nodules"]) == 2


def test_separate_lung_and_nodule_masks_give_the_same_result_as_a_layout(phantom_files, tiny_checkpoint, tmp_path):
    ref, lay, ph = phantom_files
    lung = write_volume(ph.layout.with_array((ph.layout.array > 0).astype(np.uint8)), tmp_path / "lung.nrrd")
    nod = write_volume(ph.layout.with_array((ph.layout.array == NODULE).astype(np.uint8)), tmp_path / "nod.nrrd")
    common = ("--reference", ref, "--model", tiny_checkpoint, "--progress", "none", "--threads", 1, "--device", "cpu")
    a = _run("synthesize", *common, "--layout", lay, "--output", tmp_path / "a.nrrd")
    b = _run("synthesize", *common, "--lung-mask", lung, "--nodule-mask", nod, "--output", tmp_path / "b.nrrd")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert np.array_equal(read_volume(tmp_path / "a.nrrd").array, read_volume(tmp_path / "b.nrrd").array)
    assert np.array_equal(read_volume(tmp_path / "b_labels.nrrd").array, ph.layout.array)


@pytest.fixture(scope="module")
def attribute_case(tmp_path_factory):
    """A phantom (2 nodules), its layout and a random attribute patch model (texture, margin) saved as a file."""
    from helpers import random_model
    from lungddpm import save_checkpoint

    folder = tmp_path_factory.mktemp("attributes")
    ph = make_phantom(seed=1, nodules=2)
    model = random_model(attributes=("texture", "margin"), guidance_scale=2.0, in_channels=2, profile="released-patch")
    return (write_volume(ph.ct, folder / "ct.nrrd"), write_volume(ph.layout, folder / "layout.nrrd"),
            save_checkpoint(folder / "attr.pt", model), ph)


def _synth(ct, layout, model, out, *extra):
    from lungddpm.cli import main

    return main(["synthesize", "--reference", str(ct), "--layout", str(layout), "--model", str(model), "--output",
                 str(out), "--device", "cpu", "--sampler", "ddim", "--steps", "2", "--threads", "1", *extra])


def test_prompt_and_nodule_are_the_same_request_bit_for_bit(attribute_case, tmp_path, capsys):
    ct, layout, model, ph = attribute_case
    assert _synth(ct, layout, model, tmp_path / "p.nrrd", "--prompt", "solid nodule with sharp margins") == 0
    assert _synth(ct, layout, model, tmp_path / "n.nrrd", "--nodule", "texture=solid, margin=5") == 0
    assert _synth(ct, layout, model, tmp_path / "g.nrrd", "--nodule", "texture=ground-glass, margin=5") == 0
    p, n, g = (read_volume(tmp_path / f"{s}.nrrd") for s in "png")
    assert np.array_equal(p.array, n.array) and not np.array_equal(p.array, g.array)
    meta = sitk.ReadImage(str(tmp_path / "p.nrrd"))
    assert json.loads(meta.GetMetaData("nodule_attributes"))[0]["attributes"] == {"texture": 5.0, "margin": 5.0}
    assert meta.GetMetaData("guidance") == "2" and "--prompt" in meta.GetMetaData("nodule_attributes_from")


def test_a_shape_in_a_synthesis_request_is_said_to_keep_the_layout_s_outline(attribute_case, tmp_path, capsys):
    from helpers import random_model
    from lungddpm import save_checkpoint

    ct, layout, _, ph = attribute_case
    model = save_checkpoint(tmp_path / "spic.pt", random_model(attributes=("texture", "spiculation"), in_channels=2,
                                                                profile="released-patch"))
    assert _synth(ct, layout, model, tmp_path / "s.nrrd", "--prompt", "spiculated solid nodule") == 0
    err = capsys.readouterr().err
    assert "spiculation shapes a nodule's outline, which the layout sets" in err and "add-nodule --nodule" in err
    assert _synth(ct, layout, model, tmp_path / "t.nrrd", "--nodule", "texture=solid") == 0
    assert "outline" not in capsys.readouterr().err


def test_layout_sidecar_is_used_and_said(attribute_case, tmp_path, capsys):
    from lungddpm.layout.attributes import NoduleAttributes
    from lungddpm.layout.sidecar import layout_records, write_sidecar

    ct, _, model, ph = attribute_case
    layout = write_volume(ph.layout, tmp_path / "described.nrrd")
    sidecar = write_sidecar(layout, layout_records(ph.layout, {1: NoduleAttributes(texture=1), 2: NoduleAttributes(texture=1)}))
    assert _synth(ct, layout, model, tmp_path / "s.nrrd") == 0
    assert f"nodule attributes from {sidecar}" in capsys.readouterr().err
    assert _synth(ct, layout, model, tmp_path / "j.nrrd", "--nodules-json", str(sidecar)) == 0
    assert _synth(ct, layout, model, tmp_path / "u.nrrd", "--nodule", "texture=1") == 0
    s, j, u = (read_volume(tmp_path / f"{x}.nrrd").array for x in "sju")
    assert np.array_equal(s, j) and np.array_equal(s, u)


def test_attributes_for_a_model_without_them_are_refused(attribute_case, tmp_path, capsys):
    ct, layout, _, _ = attribute_case
    assert _synth(ct, layout, "demo", tmp_path / "d.nrrd", "--nodule", "texture=solid") == 2
    err = capsys.readouterr().err
    assert "model demo-native-32.pt takes no nodule attributes; leave out --nodule" in err and len(err.splitlines()) == 1
    assert _synth(ct, layout, "demo", tmp_path / "d.nrrd", "--guidance", "3") == 2
    assert "--guidance" in capsys.readouterr().err
    assert _synth(ct, layout, "demo", tmp_path / "d.nrrd", "--nodule", "texture=glassy") == 2
    assert "is not a value of texture; use 1 ground-glass" in capsys.readouterr().err


def test_add_nodule_records_its_kind_as_texture_in_the_sidecar(phantom_files, tmp_path):
    from lungddpm.layout.sidecar import read_sidecar

    from lungddpm.cli import main

    _, lay, _ = phantom_files
    assert main(["add-nodule", "--layout", str(lay), "--output", str(tmp_path / "a.nrrd"), "--random", "1", "--kinds",
                 "ground-glass"]) == 0
    assert main(["add-nodule", "--layout", str(tmp_path / "a.nrrd"), "--output", str(tmp_path / "b.nrrd"), "--random",
                 "1", "--seed", "3", "--kinds", "part-solid"]) == 0
    textures = [r.attributes.texture for r in read_sidecar(tmp_path / "b.nrrd")]
    assert len(textures) == 3 and sorted(t for t in textures if t) == [1, 3]  # the phantom's own nodule: no kind


def test_bundled_demo_nodules_model_knows_its_attributes(phantom_files, tmp_path):
    from lungddpm.cli import DEMO_NODULES_NAME, _model_path, main
    from lungddpm.model.checkpoints import load_model

    model = load_model(_model_path(DEMO_NODULES_NAME))
    assert model.config.attributes == ("texture", "calcification", "margin", "spiculation")
    assert model.config.profile == "native-patch" and model.config.patch_spacing_mm == 1.5
    ref, lay, _ = phantom_files
    assert main(["synthesize", "--reference", str(ref), "--layout", str(lay), "--model", DEMO_NODULES_NAME, "--output",
                 str(tmp_path / "o.nrrd"), "--prompt", "ground-glass nodule", "--device", "cpu", "--threads", "1"]) == 0
    meta = sitk.ReadImage(str(tmp_path / "o.nrrd"))
    assert meta.GetMetaData("guidance") == f"{model.config.guidance_scale:g}"
