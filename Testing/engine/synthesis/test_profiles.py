"""Profiles: the released pre-processing against the golden tensors, the native profile, the way back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import rotation
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.synthesis.profiles import NATIVE_HU_WINDOW, NativeProfile, ReleasedProfile
from lungddpm.synthesis.regrid import to_reference_grid
from lungddpm.sampling.aas import background_mask
from lungddpm.io.volume import Volume, read_volume, same_grid


@pytest.fixture(scope="module")
def a0001(shared_dir):
    data = shared_dir / "data" / "lung-pet-ct-dx-A0001"
    return read_volume(data / "ct.nii.gz"), read_volume(data / "layout-crude.nii.gz")


def test_released_profile_matches_golden_preprocessing(a0001, golden_dir):
    golden = torch.load(golden_dir / "a0001-released-preprocessing.pt", weights_only=True)
    ct, layout = a0001
    space = ReleasedProfile().encode(ct, layout, 128, 2)
    x_err = (space.x_ref - golden["x_ref"].float()).abs().max().item()
    c_err = (space.cond - golden["cond"].float()).abs().max().item()
    print(f"released profile vs golden: x_ref max abs {x_err:.2e}, cond max abs {c_err:.2e}")
    assert x_err <= 1e-3 and c_err <= 1e-3  # residual: the golden tensors are stored as float16
    assert torch.equal(background_mask(space.cond), golden["background"])


def test_released_decode_inverts_the_per_slice_scaling(a0001):
    ct, layout = a0001
    profile = ReleasedProfile()
    space = profile.encode(ct, layout, 32, 2)
    hu = profile.decode(space.x_ref, space)
    img = sitk.Resample(sitk.Cast(ct.to_sitk(), sitk.sitkFloat32), space.grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.abs(hu - sitk.GetArrayFromImage(img)).max() < 0.05  # HU, float32 rounding


def test_native_window_is_invertible():
    profile = NativeProfile()
    hu = np.linspace(*NATIVE_HU_WINDOW, 101)
    assert np.allclose(profile.model_to_hu(profile.hu_to_model(hu)), hu, atol=1e-9)
    assert profile.hu_to_model(np.array([-3000.0, 3000.0])).tolist() == [-1.0, 1.0]


def _phantom_on(direction, spacing=(2.0, 2.0, 4.0), size=(160, 160, 80)):
    return make_phantom(phantom_grid(size, spacing, direction=direction), seed=3, noise_hu=0.0)


RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


OBLIQUE = tuple((rotation((0, 0, 1), 0.3) @ rotation((1, 0, 0), 0.2)).ravel())  # about S, then about L


@pytest.mark.parametrize("direction", [RAS, OBLIQUE], ids=["RAS", "oblique"])
def test_native_model_space_does_not_depend_on_file_orientation(direction):
    profile = NativeProfile()
    base = _phantom_on((1, 0, 0, 0, 1, 0, 0, 0, 1))
    other = _phantom_on(direction)
    a = profile.encode(base.ct, base.layout, 32, 2)
    b = profile.encode(other.ct, other.layout, 32, 2)
    assert np.allclose(a.grid.GetDirection(), np.eye(3).ravel()) and np.allclose(b.grid.GetDirection(), np.eye(3).ravel())
    assert np.allclose(a.grid.GetOrigin(), b.grid.GetOrigin(), atol=3.0)  # same lungs, same box within ~a voxel
    lung_a, lung_b = a.cond[0, 0] > 0, b.cond[0, 0] > 0
    dice = 2 * (lung_a & lung_b).sum().item() / (lung_a.sum() + lung_b.sum()).item()
    assert dice > 0.95, dice
    inside = lung_a & lung_b
    diff = a.x_ref[0, 0][inside] - b.x_ref[0, 0][inside]
    # same anatomy: equal mean intensity; voxel-wise differences come from vessels sampled by other grids
    assert abs(diff.mean().item()) < 0.01 and diff.abs().mean().item() < 0.1


def test_native_grid_covers_the_lungs_with_margin():
    ph = _phantom_on((1, 0, 0, 0, 1, 0, 0, 0, 1))
    space = NativeProfile(margin_mm=10.0).encode(ph.ct, ph.layout, 32, 2)
    sp = space.grid.GetSpacing()
    assert sp[0] == sp[1] == sp[2]
    lung_model = (space.cond[0, 0] > -1).numpy()
    assert not lung_model[0].any() and not lung_model[-1].any()  # margin on both ends of the longest axis
    assert lung_model.any()


@pytest.mark.parametrize("profile", [ReleasedProfile(), NativeProfile()], ids=["released", "native"])
def test_way_back_keeps_grid_type_and_outside_voxels(profile, a0001):
    ct, layout = a0001
    space = profile.encode(ct, layout, 32, 2)
    hu = profile.decode(space.x_ref * 0 + 1.0, space)  # a model output of all +1: bright everywhere
    out = to_reference_grid(hu, space.grid, ct, layout, margin_mm=2.0)
    assert same_grid(out, ct) and out.array.dtype == ct.array.dtype
    region = layout.array > 0
    assert np.array_equal(out.array[~region], ct.array[~region])
    deep = region & (sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(layout.to_sitk() > 0, sitk.sitkUInt8), [3, 3, 1])) > 0)
    assert (out.array[deep] > ct.array[deep]).mean() > 0.99  # the synthetic content is in the lungs


def test_way_back_blends_only_inside_the_region():
    ct = Volume(np.full((8, 16, 16), -800, np.int16), spacing=(1.0, 1.0, 1.0))
    lab = np.zeros((8, 16, 16), np.uint8)
    lab[2:6, 4:12, 4:12] = 1
    layout = ct.with_array(lab)
    space = NativeProfile(margin_mm=0.0).encode(ct, layout, 16, 2)
    hu = np.full((16, 16, 16), 0.0)
    out = to_reference_grid(hu, space.grid, ct, layout, margin_mm=1.0)
    assert (out.array[lab == 0] == -800).all()
    core = out.array[4, 8, 8]
    edge = out.array[2, 8, 8]
    assert core == 0 and -800 < edge < 0  # boundary voxels blended, the interior synthetic


def test_released_scaling_is_per_slice_of_the_first_file_axis_and_finite_on_a_constant_slice():
    m = np.random.default_rng(0).uniform(-1000.0, 1000.0, (4, 4, 5))
    m[1] += 700.0  # a slice with its own minimum (a CT's slices usually share air's)
    m[2] = 7.0 + np.linspace(0.0, 0.5, 20).reshape(4, 5)  # a slice spanning half a HU
    m[3] = 7.0  # a constant slice
    x, scale = ReleasedProfile().hu_to_model(m)
    for i in (0, 1, 2):
        expected = (m[i] - m[i].min()) / (m[i].max() - m[i].min()) * 2 - 1
        np.testing.assert_allclose(x[i], expected, atol=1e-9)
    assert np.all(x[3] == -1.0) and scale["lo"].shape == (4, 1, 1)


def test_native_window_is_minus_1000_to_500_hu():
    hu = np.array([-2000.0, -1000.0, -250.0, 500.0, 900.0])
    np.testing.assert_allclose(NativeProfile().hu_to_model(hu), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-12)


def test_native_grid_needs_lung_voxels():
    from lungddpm.errors import InputError
    from lungddpm.synthesis.profiles import native_grid

    with pytest.raises(InputError, match="the layout has no lung voxels \\(label 1\\); cannot place the model grid"):
        native_grid(Volume(np.zeros((8, 8, 8), np.uint8)), 32)
