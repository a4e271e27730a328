"""`lungddpm demo`, the README's main command, and the bundled demo model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm import load_model
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.io.volume import read_volume, same_grid


def test_bundled_demo_model_is_small_and_self_describing():
    assert DEMO_MODEL.is_file(), f"{DEMO_MODEL} is missing: train it with tools/train_demo_model.py"
    assert DEMO_MODEL.stat().st_size < 8 * 2**20
    model = load_model(DEMO_MODEL)
    assert model.config.profile == "native" and model.config.image_size == 32 and model.config.in_channels == 3
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored float16, loaded float32
    assert model.source.format == "lungddpm"


def test_demo_command_writes_files_and_a_plausible_synthetic_ct(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "lungddpm", "demo", "--output", str(out), "--device", "cpu", "--progress", "none"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    for name in ("reference.nrrd", "layout.nrrd", "synthetic.nrrd", "synthetic_labels.nrrd", "preview.png"):
        assert (out / name).is_file(), name
    ref, lay, syn = (read_volume(out / n) for n in ("reference.nrrd", "layout.nrrd", "synthetic.nrrd"))
    assert same_grid(syn, ref) and syn.array.dtype == ref.array.dtype
    region = lay.array > 0
    assert summary["changed_voxels_outside_lung"] == 0 and np.array_equal(syn.array[~region], ref.array[~region])
    assert len(summary["nodules"]) == 2 and (lay.array == 2).any()
    lung_hu = np.median(syn.array[lay.array == 1])
    nodule_hu = np.median(syn.array[lay.array == 2])
    assert -950 < lung_hu < -650, lung_hu  # the model makes aerated lung, not noise
    assert nodule_hu > lung_hu + 200, (nodule_hu, lung_hu)  # and a dense nodule where the layout puts one
    assert np.median(ref.array[lay.array == 2]) < lung_hu + 100  # which the reference does not have there
    png = sitk.ReadImage(str(out / "preview.png"))
    assert png.GetNumberOfComponentsPerPixel() == 3 and png.GetSize()[0] > 200
    assert summary["metadata"]["SYNTHETIC"] == "true" and summary["metadata"]["profile"] == "native"
