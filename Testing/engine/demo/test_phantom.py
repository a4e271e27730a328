"""Tests of the procedural chest phantom: determinism, HU realism, grid independence and nodules."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.layout.labels import LUNG as LUNG_LABEL, NODULE as NODULE_LABEL
from lungddpm.layout.nodules import NODULE_KINDS
from lungddpm.demo.phantom import Phantom, make_phantom, phantom_grid
from lungddpm.io.volume import Volume

CENTER = (0.0, 0.0, 0.0)
COARSE_SIZE, COARSE_SPACING = (80, 64, 40), (4.5, 4.5, 8.0)  # covers the whole chest: 360 x 288 x 320 mm
RIGHT_LUNG_POINT_MM = (-80.0, 10.0, 20.0)  # well inside the right lung of the phantom centred at CENTER


def physical_to_index(volume: Volume, point: tuple[float, float, float]) -> tuple[int, int, int]:
    """Array index (k, j, i) of the voxel nearest to a physical point."""
    i, j, k = volume.to_sitk().TransformPhysicalPointToIndex(point)
    return k, j, i


def resample_nearest(moving: Volume, reference: Volume) -> np.ndarray:
    """`moving` resampled onto `reference`'s grid with nearest-neighbour interpolation (0 outside)."""
    image = sitk.Resample(moving.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(image)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def rotation(z_deg: float, x_deg: float) -> tuple[float, ...]:
    """Row-major direction matrix: a rotation about z then about x."""
    cz, sz = np.cos(np.deg2rad(z_deg)), np.sin(np.deg2rad(z_deg))
    cx, sx = np.cos(np.deg2rad(x_deg)), np.sin(np.deg2rad(x_deg))
    about_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return tuple((about_x @ about_z).ravel())


@pytest.fixture(scope="module")
def coarse() -> Phantom:
    """A whole-chest phantom on a coarse grid with two random nodules."""
    return make_phantom(phantom_grid(COARSE_SIZE, COARSE_SPACING), body_center_lps_mm=CENTER, seed=3, nodules=2)


def test_grid_default_origin_centres_the_grid_and_rejects_bad_input() -> None:
    grid = phantom_grid((10, 20, 30), (1.0, 2.0, 3.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert grid.array.shape == (30, 20, 10)
    far_corner = grid.to_sitk().TransformIndexToPhysicalPoint((9, 19, 29))
    np.testing.assert_allclose(np.add(grid.origin, far_corner) / 2.0, 0.0, atol=1e-9)
    with pytest.raises(InputError):
        phantom_grid((0, 10, 10))
    with pytest.raises(InputError):
        phantom_grid(direction=(1, 0, 0, 1, 0, 0, 0, 0, 1))


def test_same_seed_is_identical_and_other_seeds_differ(coarse: Phantom) -> None:
    again = make_phantom(phantom_grid(COARSE_SIZE, COARSE_SPACING), body_center_lps_mm=CENTER, seed=3, nodules=2)
    np.testing.assert_array_equal(again.ct.array, coarse.ct.array)
    np.testing.assert_array_equal(again.layout.array, coarse.layout.array)
    assert again.nodules == coarse.nodules
    other = make_phantom(phantom_grid(COARSE_SIZE, COARSE_SPACING), body_center_lps_mm=CENTER, seed=4, nodules=2)
    assert not np.array_equal(other.ct.array, coarse.ct.array)
    assert [n["center_lps_mm"] for n in other.nodules] != [n["center_lps_mm"] for n in coarse.nodules]


def test_hu_values_are_those_of_a_chest_ct(coarse: Phantom) -> None:
    ct, layout = coarse.ct.array, coarse.layout.array
    assert ct.dtype == np.int16 and layout.dtype == np.uint8
    assert set(np.unique(layout)) == {0, LUNG_LABEL, NODULE_LABEL}
    assert -900 <= np.median(ct[layout == LUNG_LABEL]) <= -750
    assert abs(np.median(ct[:, :4, :4]) + 1000) < 10  # air in front of the body, at the grid corners
    assert np.mean((ct > 20) & (ct < 80)) > 0.05  # muscle, heart, vessels, abdomen
    assert np.mean((ct > -150) & (ct < -50)) > 0.01  # subcutaneous and mediastinal fat
    assert np.sum(ct > 300) > 100  # ribs, spine, sternum


def test_trachea_is_air_and_not_lung(coarse: Phantom) -> None:
    for z in (60.0, 90.0, 120.0):
        k, j, i = physical_to_index(coarse.ct, (0.0, -5.0, z))
        assert coarse.ct.array[k, j, i] < -900
        assert coarse.layout.array[k, j - 1:j + 2, i - 1:i + 2].max() == 0
    assert coarse.layout.array[physical_to_index(coarse.layout, RIGHT_LUNG_POINT_MM)] == LUNG_LABEL


@pytest.mark.parametrize("direction, size, spacing", [
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), COARSE_SIZE, COARSE_SPACING),  # RAS-like: voxel centres coincide
    (rotation(25.0, 12.0), (150, 135, 135), (2.5, 2.5, 2.5)),  # oblique, fine enough for nearest neighbour
])
def test_layout_is_the_same_body_on_other_grids(coarse: Phantom, direction: tuple, size: tuple, spacing: tuple) -> None:
    grid = phantom_grid(size, spacing, direction=direction)
    other = make_phantom(grid, body_center_lps_mm=CENTER, seed=3, noise_hu=0.0)
    lung = coarse.layout.array == LUNG_LABEL
    resampled = resample_nearest(other.layout, coarse.layout) == LUNG_LABEL
    assert np.logical_and(lung, resampled).sum() / lung.sum() > 0.97
    assert dice(lung, resampled) > 0.96


def test_random_nodules_sit_in_the_lungs(coarse: Phantom) -> None:
    layout = coarse.layout.array
    assert len(coarse.nodules) == 2
    lung_box = [(axis.min(), axis.max()) for axis in np.nonzero(layout == LUNG_LABEL)]
    for nodule_axis, (low, high) in zip(np.nonzero(layout == NODULE_LABEL), lung_box):
        assert low <= nodule_axis.min() and nodule_axis.max() <= high
    for nodule in coarse.nodules:
        assert nodule["kind"] in NODULE_KINDS and nodule["diameter_mm"] > 0
        assert layout[physical_to_index(coarse.layout, nodule["center_lps_mm"])] == NODULE_LABEL


@pytest.mark.parametrize("kind", NODULE_KINDS)
def test_requested_nodule_is_honoured(kind: str) -> None:
    diameter, spacing = 14.0, 1.0
    center = np.add(RIGHT_LUNG_POINT_MM, (0.3, -0.2, 0.4))
    grid = phantom_grid((40, 40, 40), (spacing,) * 3, origin=tuple(center - 19.5 * spacing))  # small field of view
    spec = {"center_lps_mm": tuple(center), "diameter_mm": diameter, "kind": kind}
    phantom = make_phantom(grid, body_center_lps_mm=CENTER, seed=5, nodules=[spec], noise_hu=0.0)
    assert phantom.nodules == [spec]
    label = phantom.layout.array == NODULE_LABEL
    assert abs(label.sum() * spacing**3 / (np.pi / 6.0 * diameter**3) - 1.0) < 0.2
    k, j, i = np.nonzero(label)
    centroid = np.array(grid.origin) + spacing * np.array([i.mean(), j.mean(), k.mean()])
    assert np.linalg.norm(centroid - center) < spacing
    assert (phantom.layout.array[~label] == LUNG_LABEL).mean() > 0.9  # the rest of this small box is lung
    core = phantom.ct.array[physical_to_index(phantom.ct, tuple(center))]
    assert (-650 <= core <= -350) if kind == "ground-glass" else (0 <= core <= 100)


def test_bad_nodule_specs_are_rejected() -> None:
    grid = phantom_grid((16, 16, 16), (4.0, 4.0, 4.0))
    with pytest.raises(InputError, match="kind"):
        make_phantom(grid, nodules=[{"center_lps_mm": (0, 0, 0), "diameter_mm": 5, "kind": "fluffy"}])
    with pytest.raises(InputError, match="diameter_mm"):
        make_phantom(grid, nodules=[{"center_lps_mm": (0, 0, 0)}])
    with pytest.raises(InputError, match="no room"):
        make_phantom(grid, body_center_lps_mm=CENTER, nodules=1)  # this small box holds mediastinum only


def test_anisotropic_thick_slices() -> None:
    grid = phantom_grid((256, 256, 12), (0.7, 0.7, 5.0))  # 179 mm field of view: the body is clipped
    phantom = make_phantom(grid, body_center_lps_mm=(0.0, 0.0, -20.0), seed=1, nodules=1)
    assert phantom.ct.array.shape == phantom.layout.array.shape == (12, 256, 256)
    assert phantom.ct.spacing == (0.7, 0.7, 5.0)
    layout = phantom.layout.array
    assert layout[physical_to_index(phantom.layout, (-80.0, 10.0, 0.0))] == LUNG_LABEL
    assert layout[physical_to_index(phantom.layout, (0.0, 10.0, -20.0))] == 0  # mediastinum
    nodule = phantom.nodules[0]
    assert layout[physical_to_index(phantom.layout, nodule["center_lps_mm"])] == NODULE_LABEL
    assert -900 <= np.median(phantom.ct.array[layout == LUNG_LABEL]) <= -750
