"""`lungddpm lung-mask` (report, warnings, preview) and `lungddpm layout from-segmentation` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.layout.labels import LUNG


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungddpm", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_lung_mask_of_a_tight_field_of_view(real_ct_dir: Path, tmp_path: Path) -> None:
    """The issue's case: both lungs touch the left and right borders (a Crop Volume result): litres per lung."""
    tight = Volume.from_sitk(sitk.ReadImage(str(real_ct_dir / "ct.nii.gz"))[110:395, 100:440, :])
    ct_path = write_volume(tight, tmp_path / "tight.nii.gz")
    res = _run("lung-mask", ct_path, "--output", tmp_path / "mask.nrrd", "--preview", tmp_path / "mask.png")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert 4.5 < record["lung_volume_l"] < 6.5 and record["warnings"] == [] and "warning" not in res.stderr
    assert record["right_lung_l"] > record["left_lung_l"] > 1.5 and 0.4 < record["left_fraction"] < 0.5
    mask = read_volume(tmp_path / "mask.nrrd")
    assert mask.array[:, :, 0].any() and mask.array[:, :, -1].any()  # the lungs reach both borders
    picture = sitk.ReadImage(record["preview"])
    assert picture.GetNumberOfComponentsPerPixel() == 3 and picture.GetSize()[1] > picture.GetSize()[0]


def test_lung_mask_warns_when_a_lung_is_missing(real_ct_dir: Path, tmp_path: Path) -> None:
    """A CT whose left lung is filled (as by a complete effusion): the report says which lung and why."""
    ct, crude = read_volume(real_ct_dir / "ct.nii.gz"), read_volume(real_ct_dir / "layout-crude.nii.gz")
    left_half = np.arange(ct.array.shape[2]) >= 256  # LPS x grows with i here: the patient's left
    hu = np.where(left_half[None, None, :] & (crude.array == LUNG), 30, ct.array)
    res = _run("lung-mask", write_volume(ct.with_array(hu.astype(np.int16)), tmp_path / "ct.nrrd"),
               "--output", tmp_path / "mask.nrrd")
    assert res.returncode == 0, res.stderr
    (warning,) = json.loads(res.stdout)["warnings"]
    assert "left lung" in warning and f"lungddpm: warning: {warning}" in res.stderr


def test_preview_never_overwrites_the_ct(real_ct_dir: Path, tmp_path: Path) -> None:
    ct_path = write_volume(read_volume(real_ct_dir / "ct.nii.gz"), tmp_path / "ct.nrrd")
    before = ct_path.read_bytes()
    res = _run("lung-mask", ct_path, "--output", tmp_path / "mask.nrrd", "--preview", ct_path)
    assert res.returncode == 2 and "ct.nrrd" in res.stderr and ct_path.read_bytes() == before  # refused before any work
    assert not (tmp_path / "mask.nrrd").exists()


def test_layout_from_a_totalsegmentator_label_map(real_ct_dir: Path, tmp_path: Path) -> None:
    """Lobes 10-14 become lung, trachea 16 does not; with --reference the layout is checked and each lung reported."""
    ct = read_volume(real_ct_dir / "ct.nii.gz")
    crude = read_volume(real_ct_dir / "layout-crude.nii.gz")
    lung = crude.array == LUNG
    labels = np.zeros(lung.shape, np.uint8)
    labels[lung & (np.arange(lung.shape[2]) < 256)[None, None, :]] = 12  # the right lung as one "upper lobe"
    labels[lung & (np.arange(lung.shape[2]) >= 256)[None, None, :]] = 10
    labels[:, :5, :5] = 16  # a "trachea" far from the lungs: not lung either way
    seg = write_volume(crude.with_array(labels), tmp_path / "ts.nii.gz")
    res = _run("layout", "from-segmentation", seg, "--output", tmp_path / "layout.nrrd",
               "--reference", real_ct_dir / "ct.nii.gz")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert np.array_equal(read_volume(tmp_path / "layout.nrrd").array, lung.astype(np.uint8))
    assert record["nodule_voxels"] == 0 and record["warnings"] == []
    assert abs(record["lung_volume_l"] - lung.sum() * np.prod(ct.spacing) / 1e6) < 0.01
    res = _run("layout", "from-segmentation", seg, "--output", tmp_path / "none.nrrd", "--lung-labels", "3")
    assert res.returncode == 2 and "--lung-labels" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "none.nrrd").exists()
