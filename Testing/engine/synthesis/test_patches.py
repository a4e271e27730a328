"""Lung-DDPM+ patch mode: cube planning, exact cut-and-paste geometry, batching, released checkpoints, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import random_model, rotation
from lungddpm import ConfigError, InputError, LungDDPM, Volume, load_model, read_volume, save_checkpoint, synthesize
from lungddpm.model.checkpoints import released_state_dict
from lungddpm.cli import main
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.model.config import NATIVE_PATCH_PROFILE
from lungddpm.synthesis.patches import PatchProfile, nodule_components, plan_patches


def patch_model(size: int = 16, seed: int = 0, **overrides) -> LungDDPM:
    """A small random Lung-DDPM+-shaped model (2 input channels, released-patch profile)."""
    shape = {} if size == 16 else dict(image_size=size, channel_mult=(1, 2, 3, 4), attention_resolutions=(16,))
    return random_model(seed, **{"in_channels": 2, "timesteps": 20, "profile": "released-patch", **shape, **overrides})


def case(shape=(40, 48, 56), spacing=(0.8, 0.9, 1.5), direction=np.eye(3), centres=((10, 12, 14),), radius=2.5,
         dtype=np.int16) -> tuple[Volume, Volume]:
    """A reference (lung-like HU noise in a box of lung) and a layout with spherical nodules at (i, j, k) centres."""
    rng = np.random.default_rng(0)
    k, j, i = np.indices(shape)
    ct = (-850 + 60 * rng.standard_normal(shape)).astype(dtype)
    layout = np.zeros(shape, np.uint8)
    layout[2:-2, 2:-2, 2:-2] = LUNG
    for ci, cj, ck in centres:
        d2 = ((i - ci) * spacing[0]) ** 2 + ((j - cj) * spacing[1]) ** 2 + ((k - ck) * spacing[2]) ** 2
        layout[d2 <= radius**2] = NODULE
    ct[layout == 0] += 900  # soft-tissue wall around the lung box
    geometry = dict(origin=(-20.0, 30.0, 100.0), spacing=spacing, direction=tuple(np.asarray(direction).ravel()))
    return Volume(ct, **geometry), Volume(layout, **geometry)


def test_plan_groups_near_nodules_and_separates_far_ones():
    _, layout = case(centres=((10, 12, 14), (15, 12, 14), (40, 35, 9)), radius=1.5)
    patches, components = plan_patches(layout, 16, None)
    assert nodule_components(layout)[1] == 3
    assert sorted(len(p.components) for p in patches) == [1, 2]  # the two near nodules share one cube
    assert sorted(c for p in patches for c in p.components) == [1, 2, 3]  # every nodule pasted exactly once
    for p in patches:  # native geometry: cube voxels are the reference's voxels, cube inside the image
        assert np.array_equal(p.start, np.round(p.start)) and np.all(p.start >= 0)
        assert np.all(p.start + 15 <= np.array(layout.array.shape[::-1]) - 1)
        assert np.allclose(p.grid.GetSpacing(), layout.spacing)


def test_plan_refuses_no_nodule_and_a_nodule_larger_than_the_cube():
    _, layout = case(centres=())
    with pytest.raises(InputError, match="no nodule"):
        plan_patches(layout, 16, None)
    _, big = case(centres=((20, 24, 20),), radius=9.0)
    with pytest.raises(InputError, match="full-volume"):
        plan_patches(big, 16, None)
    assert len(plan_patches(big, 16, 2.0)[0]) == 1  # 2-mm cube voxels: 32 mm of cube leave room for it


def box_layout(*boxes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]], shape=(40, 48, 56)) -> Volume:
    """A (k, j, i) lung box with nodules painted as index boxes ((i0, i1), (j0, j1), (k0, k1)), ends included."""
    array = np.zeros(shape, np.uint8)
    array[2:-2, 2:-2, 2:-2] = LUNG
    for (i0, i1), (j0, j1), (k0, k1) in boxes:
        array[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = NODULE
    return Volume(array, origin=(-20.0, 30.0, 100.0), spacing=(0.8, 0.9, 1.5))


def test_plan_limits_and_centres_cubes_to_the_voxel():
    """16³ cubes on the reference's voxels, 1-voxel border: a nodule 13 voxels across fits (centred, start rounded
    half to even), 14 is refused with its size in mm; the largest nodule is centred first, and another nodule joins
    its cube exactly when it lies inside the border (first voxel at start + 1, last at start + 14)."""
    (patch,), _ = plan_patches(box_layout(((10, 22), (12, 14), (14, 16))), 16, None)
    assert patch.start.tolist() == np.round(np.array([16.0, 13.0, 15.0]) - 7.5).tolist()
    with pytest.raises(InputError, match=r"a nodule spans \[11\.2, 2\.7, 4\.5\] mm, more than .* cube of \[12\.8, 14\.4, 24\.0\] mm"):
        plan_patches(box_layout(((10, 23), (12, 14), (14, 16))), 16, None)  # 14 × 3 × 3 voxels of 0.8 × 0.9 × 1.5 mm
    fine = box_layout(((10, 23), (12, 14), (14, 16)))
    with pytest.raises(InputError, match=r"a nodule spans \[11\.6, 2\.7, 4\.5\] mm, .* cube of \[13\.3, 14\.4, 24\.0\] mm"):
        plan_patches(Volume(fine.array, origin=fine.origin, spacing=(0.83, 0.9, 1.5)), 16, None)  # 14 × 0.83 = 11.62
    big = ((21, 25), (21, 25), (18, 22))  # centre (23, 23, 20): cube start (16, 16, 12), last voxel (31, 31, 27)
    flat = ((20, 26), (20, 26), (24, 24))  # larger (7 × 7 × 1) than the small one below, though flat
    (patch,), _ = plan_patches(box_layout(flat, ((28, 30), (22, 24), (21, 23))), 16, None)
    assert patch.start.tolist() == np.round(np.array([23.0, 23.0, 24.0]) - 7.5).tolist()  # centred on the flat one
    for small, cubes in [(((16, 17), (22, 23), (19, 20)), 2), (((17, 18), (22, 23), (19, 20)), 1),
                         (((30, 30), (22, 23), (19, 20)), 1), (((30, 31), (22, 23), (19, 20)), 2)]:
        # first voxel at start (in the border) and start + 1; last at start + 14 and start + 15 (in the border)
        patches, _ = plan_patches(box_layout(big, small), 16, None)
        assert len(patches) == cubes and patches[0].start.tolist() == [16.0, 16.0, 12.0], small
    # 1.6-mm cube voxels: 2 reference voxels along i, so the border is 2 voxels there (cube start i = 23 − 15 = 8)
    for first_i, cubes in ((10, 1), (9, 2)):
        patches, _ = plan_patches(box_layout(big, ((first_i, first_i + 1), (22, 23), (19, 20))), 16, 1.6)
        assert len(patches) == cubes and patches[0].start[0] == pytest.approx(8.0), first_i


def test_released_64_cubes_keep_a_4_voxel_border_and_each_profile_its_x0_correction():
    """The released Lung-DDPM+ geometry (64³ cubes): a border of 64/16 = 4 voxels, so a nodule 3 voxels inside
    the centred cube gets a cube of its own; released-patch samples with dynamic thresholding, native-patch clamps."""
    big = ((38, 42), (38, 42), (38, 42))  # centre 40: cube start round(40 − 31.5) = 8
    for first, cubes in ((12, 1), (11, 2)):  # first voxel at start + 4 (inside the border) and start + 3
        patches, _ = plan_patches(box_layout(big, ((first, first + 1), (40, 41), (40, 41)), shape=(80, 80, 80)), 64, None)
        assert len(patches) == cubes and patches[0].start.tolist() == [8.0, 8.0, 8.0], first
    (patch,), _ = plan_patches(box_layout(((5, 7), (20, 22), (20, 22)), shape=(40, 48, 13)), 16, None)
    assert patch.start[0] == np.round((13 - 1) / 2 - 7.5)  # an image narrower than the cube: centred on the image
    assert PatchProfile().x0_correction == "dynamic"
    assert PatchProfile(profile=NATIVE_PATCH_PROFILE).x0_correction == "clamp"


def test_patch_spacing_is_refused_where_it_means_nothing():
    reference, layout = case()
    with pytest.raises(ConfigError, match="Lung-DDPM\\+ patch models only"):
        synthesize(reference, layout, random_model(profile="native"), steps=1, device="cpu", patch_spacing_mm=1.0)
    with pytest.raises(ConfigError, match="positive voxel size"):
        synthesize(reference, layout, patch_model(), steps=1, device="cpu", patch_spacing_mm=-2.0)


@pytest.mark.parametrize("spacing_mm", [None, 0.7])
def test_patch_synthesis_changes_only_the_nodules(spacing_mm):
    angle = rotation((1, 2, 0.5), 0.4)
    reference, layout = case(direction=angle, centres=((10, 12, 6), (30, 36, 20)))
    model = patch_model(patch_spacing_mm=spacing_mm)
    result = synthesize(reference, layout, model, seed=3, sampler="dpmpp2m", steps=4, device="cpu")
    changed = result.image.array != reference.array
    nodule = layout.array == NODULE
    assert result.image.array.dtype == np.int16 and changed[nodule].mean() > 0.8
    if spacing_mm is None:  # no interpolation: exactly the nodule voxels may change
        assert not changed[~nodule].any()
    else:  # a feather one cube voxel (0.7 mm) + one reference voxel (0.8 mm) wide around each nodule, nothing beyond
        mask = sitk.GetImageFromArray(nodule.astype(np.uint8))
        mask.SetSpacing(layout.spacing)
        distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False,
                                                                       useImageSpacing=True))
        assert not changed[distance >= 1.5].any() and changed[~nodule].any()
    assert result.metadata["patches"] == "2" and result.metadata["SYNTHETIC"] == "true"
    assert np.array_equal(result.labels.array, layout.array)


def test_cubes_have_their_own_seeds_so_batching_does_not_change_the_result():
    reference, layout = case(dtype=np.float32, centres=((10, 12, 6), (30, 36, 20)))
    model = patch_model()
    # fp32: the bound is float32's rounding of batched convolutions (bf16 rounds more coarsely)
    batched = synthesize(reference, layout, model, seed=1, sampler="ddim", steps=2, device="cpu", precision="fp32")
    together = batched.image.array
    calls = []
    one_by_one = synthesize(reference, layout, model, seed=1, sampler="ddim", steps=2, device="cpu", precision="fp32",
                            progress=lambda i, n: calls.append((i, n)), batch=1)
    alone = one_by_one.image.array
    assert (batched.metadata["batch"], one_by_one.metadata["batch"]) == ("2", "1")  # auto: both cubes in one pass
    assert np.abs(together - alone).max() < 0.05  # HU; batched convolutions round differently, nothing more
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)  # two cubes of two passes each, one progress scale
    other = synthesize(reference, layout, model, seed=2, sampler="ddim", steps=2, device="cpu").image.array
    assert np.abs(together - other).max() > 1.0


def test_a_seed_too_large_for_the_cube_seeds_is_refused():
    profile = PatchProfile()
    assert profile.sample_seeds(3, 2) == [3 * 1_000_003, 3 * 1_000_003 + 1]
    largest = (2**64 - 2) // 1_000_003
    assert profile.sample_seeds(largest, 2)[-1] < 2**64  # torch.Generator takes it
    with pytest.raises(ConfigError, match=f"seed {largest + 1} .*too large for a Lung-DDPM\\+ patch model.*up to {largest}"):
        profile.sample_seeds(largest + 1, 2)
    count = (2**64 - 1) % 1_000_003 + 1  # cubes whose last seed is exactly the largest a generator takes
    assert profile.sample_seeds(largest, count)[-1] == 2**64 - 1
    with pytest.raises(ConfigError, match="too large"):
        profile.sample_seeds(largest, count + 1)


def test_released_lung_ddpm_plus_checkpoint_loads_as_a_patch_model(tmp_path):
    model = patch_model(size=64, timesteps=250)
    path = tmp_path / "best_model.pt"
    sd = released_state_dict(model)
    torch.save({"step": 5, "model": sd, "ema": sd}, path)
    loaded = load_model(path, device="cpu")
    c = loaded.config
    assert (c.profile, c.image_size, c.in_channels, c.channel_mult, c.timesteps) == ("released-patch", 64, 2, (1, 2, 3, 4), 250)
    assert c.patch_spacing_mm is None  # released geometry: the CT's own voxels


def test_cli_chooses_patch_mode_for_a_patch_model(tmp_path, capsys):
    from lungddpm import write_volume

    reference, layout = case()
    write_volume(reference, tmp_path / "ct.nrrd")
    write_volume(layout, tmp_path / "layout.nrrd")
    save_checkpoint(tmp_path / "plus.pt", patch_model())
    out = tmp_path / "syn.nrrd"
    code = main(["synthesize", "--reference", str(tmp_path / "ct.nrrd"), "--layout", str(tmp_path / "layout.nrrd"),
                 "--model", str(tmp_path / "plus.pt"), "--output", str(out), "--steps", "2", "--progress", "json",
                 "--device", "cpu"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["event"] == "done"
    image = read_volume(out)
    nodule = layout.array == NODULE
    assert np.array_equal(image.array[~nodule], reference.array[~nodule])


def test_patch_mode_on_the_real_ct(real_ct_dir):
    """The real tumour (67 × 81 × 55 mm) overflows a 64³ cube of the CT's own 0.84-mm voxels; 2-mm cubes hold it."""
    reference = read_volume(real_ct_dir / "ct.nii.gz")
    layout = read_volume(real_ct_dir / "layout-crude.nii.gz")
    model = patch_model(size=64)
    with pytest.raises(InputError, match="full-volume Lung-DDPM model for it, or a larger --patch-spacing"):
        synthesize(reference, layout, model, steps=2, device="cpu")
    result = synthesize(reference, layout, model, seed=0, sampler="dpmpp3m", steps=2, device="cpu", patch_spacing_mm=2.0)
    nodule = layout.array == NODULE
    changed = result.image.array != reference.array
    mask = sitk.GetImageFromArray(nodule.astype(np.uint8))
    mask.SetSpacing(layout.spacing)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False,
                                                                   useImageSpacing=True))
    assert result.image.array.dtype == reference.array.dtype and result.metadata["patch_spacing_mm"] == "2"
    assert not changed[distance >= 2.0 + min(layout.spacing)].any() and changed[nodule].mean() > 0.5


def test_native_patch_cubes_use_the_fixed_window_so_bright_cores_survive():
    from lungddpm.synthesis.patches import encode_patch
    from lungddpm.synthesis.profiles import NATIVE_HU_WINDOW, ReleasedProfile, WindowedCubes

    reference, layout = case(centres=((20, 24, 20),), radius=3.0)
    patch = plan_patches(layout, 16, None)[0][0]
    windowed, released = encode_patch(reference, layout, patch, "native-patch"), encode_patch(reference, layout, patch)
    lo, hi = NATIVE_HU_WINDOW
    hu = np.transpose(WindowedCubes().decode(windowed.x_ref, windowed), (2, 0, 1))  # back to the cube's file axes
    torch.testing.assert_close(windowed.x_ref[0, 0].double(), torch.from_numpy((np.clip(hu, lo, hi) - lo) / (hi - lo) * 2 - 1))
    # the brightest output a model can give: +1 everywhere. Released: each slice's own reference maximum; windowed: hi
    brightest = torch.ones_like(windowed.x_ref)
    slice_max = np.transpose(released.scale["hi"] * np.ones((16, 16, 16)), ReleasedProfile.inverse_axes)
    assert np.allclose(ReleasedProfile().decode(brightest, released), slice_max) and slice_max.max() < 200
    assert np.allclose(WindowedCubes().decode(brightest, windowed), hi)


def test_native_patch_model_synthesises_only_the_nodules_and_records_its_profile():
    reference, layout = case(centres=((10, 12, 6), (30, 36, 20)))
    result = synthesize(reference, layout, patch_model(profile="native-patch"), seed=1, steps=3, device="cpu")
    nodule = layout.array == NODULE
    changed = result.image.array != reference.array
    assert not changed[~nodule].any() and changed[nodule].mean() > 0.8
    assert result.metadata["profile"] == "native-patch" and result.metadata["patches"] == "2"
    assert result.image.array[nodule].min() >= -1000 and result.image.array[nodule].max() <= 500  # the window's HU


def test_the_feather_of_fine_voxels_may_be_under_a_millimetre_wide():
    """Resampled cubes of fine voxels: a 0.9 mm feather (cube + reference voxel) still blends linearly outside the nodule."""
    from lungddpm.synthesis.patches import _feather

    mask = np.zeros((1, 1, 9), bool)
    mask[..., :4] = True
    weight = _feather(mask, Volume(np.zeros((1, 1, 9), np.int16), spacing=(0.3, 0.3, 0.3)), 0.9)[0, 0]
    assert weight == pytest.approx([1, 1, 1, 1, 1 - 0.3 / 0.9, 1 - 0.6 / 0.9, 0, 0, 0], abs=1e-6)  # 0.3, 0.6 mm outside
