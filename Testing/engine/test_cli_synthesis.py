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
