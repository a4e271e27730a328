"""The way back, to a tenth of a model voxel: a model output that encodes position lands where it says (hypothesis).

The "model output" here is an affine function of each model voxel's physical position (read from the
model grid's own origin, spacing and direction), put into the tensor axes the profiles document
(released and patch: (D, H, W) = the file's (i, k, j); native: (S, P, L) = (k, j, i) of an LPS grid).
Linear resampling reproduces an affine function exactly, so on the reference grid every synthesised
voxel must hold the function's value at *its own* physical point: a shift of the content (half a
model voxel is 15 tolerances), a permuted, flipped or transposed cube, or values pasted at the wrong
voxels all fail. Reference grids are random: LPS, RAS and oblique directions, odd and even sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry_strategies import grids, index_matrix
from helpers import small_config
from lungddpm.io.volume import Volume
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.model.config import NATIVE_PROFILE, PATCH_PROFILE, RELEASED_PROFILE
from lungddpm.synthesis.patches import PatchProfile
from lungddpm.synthesis.profiles import NativeProfile, ReleasedProfile

SIZE = 16  # model cube size
TOLERANCE_MODEL_VOXELS = 0.1
SLOPES = np.array([1.0, 1.3, 1.7])  # the pattern's change per model voxel along the grid's i, j, k (all distinct)
TENSOR_AXES = {RELEASED_PROFILE: (2, 0, 1), PATCH_PROFILE: (2, 0, 1), NATIVE_PROFILE: (0, 1, 2)}  # documented
HU_OF = {RELEASED_PROFILE: (-1000.0, 0.0), PATCH_PROFILE: (-1000.0, 0.0), NATIVE_PROFILE: (-1000.0, 500.0)}
# released / patch: per-slice min-max of a reference that is -1000 HU in one j-half and 0 HU in the other,
# so every slice maps [-1, 1] to [-1000, 0]; native: the fixed window [-1000, 500]


def _case(geometry: dict, offset: tuple[float, float, float]) -> tuple[Volume, Volume]:
    """A float reference (-1000 | 0 HU, split in j) and a layout: lung inside a 1-voxel shell, a ball nodule at the split."""
    shape = geometry["shape"]
    kw = {k: v for k, v in geometry.items() if k != "shape"}
    k, j, i = np.indices(shape)
    reference = Volume(np.where(j < shape[1] // 2, -1000.0, 0.0).astype(np.float32), **kw)
    labels = np.zeros(shape, np.uint8)
    labels[1:-1, 1:-1, 1:-1] = LUNG
    centre = np.array(shape) / 2 + np.array(offset)  # (k, j, i), sub-voxel
    labels[(k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= 2.5**2] = NODULE
    return reference, Volume(labels, **kw)


def _grid_matrix(grid: sitk.Image) -> np.ndarray:
    """direction @ diag(spacing) of a SimpleITK grid."""
    return np.asarray(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())


def _points(origin, matrix: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Physical points (k, j, i, 3) of every voxel of a grid."""
    k, j, i = np.indices(shape)
    return np.asarray(origin) + np.stack([i, j, k], axis=-1) @ matrix.T


def _run(profile, profile_name: str, reference: Volume, layout: Volume):
    """Encode the case, give every sample the position-encoding output, decode; (output, pattern at the reference voxels)."""
    config = small_config(image_size=SIZE, profile=profile_name,
                          in_channels=2 if profile_name == PATCH_PROFILE else 3)
    case = profile.encode_case(reference, layout, config)
    first = case.spaces[0].grid
    inverse = np.linalg.inv(_grid_matrix(first))  # physical -> model index of the first grid
    to_mm = index_matrix(reference.direction, reference.spacing)
    centre = np.asarray(reference.origin) + to_mm @ ((np.array(reference.array.shape[::-1]) - 1) / 2)

    def pattern(points: np.ndarray) -> np.ndarray:
        return ((points - centre) @ inverse.T) @ SLOPES

    model_points = [_points(s.grid.GetOrigin(), _grid_matrix(s.grid), (SIZE,) * 3) for s in case.spaces]
    scale = 0.9 / max(np.abs(pattern(p)).max() for p in model_points)  # the pattern stays inside [-0.9, 0.9]
    x0 = torch.stack([torch.from_numpy(np.transpose(scale * pattern(p), TENSOR_AXES[profile_name]).copy())[None]
                      for p in model_points]).float()
    image, _ = profile.decode_case(x0, case, reference, layout)
    lo, hi = HU_OF[profile_name]
    y = scale * pattern(_points(reference.origin, to_mm, reference.array.shape))
    expected = (y + 1) / 2 * (hi - lo) + lo
    tolerance = TOLERANCE_MODEL_VOXELS * SLOPES.min() * scale * (hi - lo) / 2  # HU of 0.1 model voxel, flattest axis
    return image, expected, tolerance


GEOMETRY = dict(geometry=grids(sizes=(14, 24), anisotropy=2.0), offset=st.tuples(*[st.floats(-0.5, 0.5)] * 3))


@pytest.mark.parametrize("profile_name", [RELEASED_PROFILE, NATIVE_PROFILE])
@settings(max_examples=15, deadline=None)
@given(**GEOMETRY)
def test_full_volume_content_lands_at_its_physical_position(profile_name, geometry, offset):
    reference, layout = _case(geometry, offset)
    profile = (ReleasedProfile if profile_name == RELEASED_PROFILE else NativeProfile)(blend_margin_mm=0.0)
    image, expected, tolerance = _run(profile, profile_name, reference, layout)
    region = layout.array > 0
    error = np.abs(image.array - expected)[region]
    assert error.max() <= tolerance, (error.max(), tolerance)
    assert np.array_equal(image.array[~region], reference.array[~region])  # outside: the reference itself


@pytest.mark.parametrize("cube_voxels", ["reference", "resampled"])
@settings(max_examples=15, deadline=None)
@given(**GEOMETRY)
def test_patch_content_lands_at_its_physical_position(cube_voxels, geometry, offset):
    reference, layout = _case(geometry, offset)
    profile = PatchProfile(None if cube_voxels == "reference" else max(geometry["spacing"]))
    image, expected, tolerance = _run(profile, PATCH_PROFILE, reference, layout)
    nodule = layout.array == NODULE
    error = np.abs(image.array - expected)[nodule]
    assert error.max() <= tolerance, (error.max(), tolerance)
    if cube_voxels == "reference":  # no feather: only the nodule's own voxels change
        assert np.array_equal(image.array[~nodule], reference.array[~nodule])
