"""Every file a synthesis writes is marked SYNTHETIC, read back by independent readers (plain NRRD text, nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import random_model
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.generation.export import dataset_folder
from lungddpm.generation.generate import GenerateSettings, generate, read_references
from lungddpm.generation.shards import Shard
from lungddpm.io.volume import write_volume
from lungddpm.model.checkpoints import save_checkpoint
from lungddpm.synthesis.synthesize import synthesize, write_result

pytestmark = pytest.mark.usefixtures("one_thread")


def nrrd_fields(path: Path) -> dict[str, str]:
    """The key:=value pairs of an NRRD header, parsed as plain text."""
    head = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    return dict(line.split(":=", 1) for line in head.splitlines() if ":=" in line)


def nifti_descrip(path: Path) -> str:
    """The NIfTI descrip field, read by nibabel."""
    return bytes(nib.load(path).header["descrip"]).decode("ascii").rstrip("\0")


@pytest.fixture(scope="module")
def result():
    """A synthesis of a small phantom with a random 8³ model."""
    phantom = make_phantom(phantom_grid((48, 48, 24), (7.0, 7.0, 12.0)), seed=1, nodules=1)
    return synthesize(phantom.ct, phantom.layout, random_model(image_size=8), seed=0, steps=2, device="cpu")


def test_nrrd_image_and_labels_carry_the_same_synthetic_provenance(result, tmp_path):
    image, labels = write_result(result, tmp_path / "s.nrrd")
    fields, label_fields = nrrd_fields(image), nrrd_fields(labels)
    assert fields["SYNTHETIC"] == label_fields["SYNTHETIC"] == "true"
    assert fields.keys() == label_fields.keys() and "seed" in fields and "model_sha256" in fields
    assert {k: v for k, v in fields.items() if k != "descrip"} == {k: v for k, v in label_fields.items() if k != "descrip"}
    assert "SYNTHETIC" in fields["descrip"] and "SYNTHETIC" in label_fields["descrip"]


def test_nifti_image_and_labels_say_synthetic(result, tmp_path):
    image, labels = write_result(result, tmp_path / "s.nii.gz")
    assert "SYNTHETIC" in nifti_descrip(image) and "SYNTHETIC" in nifti_descrip(labels)


@pytest.mark.parametrize("labels", ["layout", "nodule"])
def test_every_file_of_a_generated_case_says_synthetic(labels, tmp_path):
    phantom = make_phantom(phantom_grid((48, 48, 24), (7.0, 7.0, 12.0)), seed=1, nodules=1)
    write_volume(phantom.ct, tmp_path / "refs" / "c0.nii.gz")
    write_volume(phantom.layout, tmp_path / "refs" / "c0_layout.nii.gz")
    model = save_checkpoint(tmp_path / "m.pt", random_model(image_size=8))
    paths = dataset_folder(tmp_path / "out", 3, "Prov")
    generate(read_references(tmp_path / "refs"), model, paths,
             GenerateSettings(steps=1, device="cpu", label_set=labels), Shard(0, 1), progress="none")
    written = sorted(p for p in paths.root.rglob("*.nii.gz"))
    assert len(written) == (2 if labels == "layout" else 3)  # image, labels (and the layout beside nodule labels)
    for path in written:
        assert "SYNTHETIC" in nifti_descrip(path), path
