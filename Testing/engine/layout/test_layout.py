"""Label conventions, the automatic lung mask, parametric nodules and layout validation (lungddpm.layout)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import rotation
from lungddpm.errors import InputError
from lungddpm.layout.labels import BACKGROUND, LUNG, NODULE, compose_layout, validate_labels, validate_layout
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.nodules import add_nodule, nodule_mask, random_nodules
from lungddpm.io.volume import Volume, index_to_physical, physical_to_index, resample_like

GRID_DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation((0.3, -1.0, 2.0), 0.7),
}


def grid(direction: np.ndarray, shape=(40, 96, 96), spacing=(0.8, 0.8, 2.0)) -> Volume:
    """An empty uint8 grid with anisotropic spacing, centred about the LPS origin."""
    centre_offset = np.asarray(direction).reshape(3, 3) @ (np.asarray(spacing) * (np.asarray(shape[::-1]) - 1) / 2)
    return Volume(np.zeros(shape, np.uint8), tuple(-centre_offset), spacing, np.asarray(direction).ravel())


def synthetic_layout() -> Volume:
    """A layout with one ellipsoidal 'lung' (label 1) of semi-axes 30 x 25 x 30 mm about the LPS origin."""
    layout = grid(GRID_DIRECTIONS["oblique"])
    k, j, i = np.indices(layout.array.shape)
    p = index_to_physical(layout, np.stack([i, j, k], axis=-1))
    layout.array[((p / (30.0, 25.0, 30.0)) ** 2).sum(axis=-1) <= 1.0] = LUNG
    return layout


def centroid_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The physical centroid (LPS mm) of a mask's voxels."""
    k, j, i = np.nonzero(mask)
    return index_to_physical(volume, np.stack([i, j, k], axis=-1)).mean(axis=0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


# ----------------------------------------------------------------------------------------------------------
# Real CT


@pytest.fixture(scope="module")
def measured(real_ct: tuple[Volume, Volume], report: ModuleType) -> tuple[np.ndarray, dict]:
    """Our lung mask of the real CT and the report's numbers (volume, runtime, trachea voxels, Dice)."""
    ours, numbers = report.measure(*real_ct)
    print(numbers)
    return ours, numbers


def test_lung_mask_volume(measured: tuple[np.ndarray, dict]) -> None:
    _, numbers = measured
    assert 3.0 <= numbers["lung_volume_l"] <= 7.0  # the runtime is measured by bench/lung_mask_report.py


def test_lung_mask_two_lungs_left_and_right(real_ct: tuple[Volume, Volume], measured: tuple[np.ndarray, dict]) -> None:
    ct, _ = real_ct
    ours, _ = measured
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(
        sitk.GetImageFromArray(ours.astype(np.uint8)))))
    litres = np.bincount(labels.ravel())[1:] * np.prod(ct.spacing) / 1e6
    print("components (L):", np.round(litres[:4], 3))
    assert litres.size >= 2 and litres[1] >= 1.0
    assert litres[2:].sum() < 0.01
    right_x, left_x = sorted(centroid_mm(ct, labels == n)[0] for n in (1, 2))
    assert right_x < -50.0 and left_x > 50.0  # LPS x grows to the patient's left


def test_lung_mask_excludes_trachea_and_matches_crude(measured: tuple[np.ndarray, dict]) -> None:
    _, numbers = measured
    assert numbers["trachea_voxels_reference"] > 5000
    assert numbers["trachea_voxels_ours"] < 0.1 * numbers["trachea_voxels_crude"]
    assert numbers["dice_outside_trachea"] > 0.95


def test_lung_mask_independent_of_axis_order(real_ct: tuple[Volume, Volume], measured: tuple[np.ndarray, dict]) -> None:
    ct, _ = real_ct
    ours, _ = measured
    image = sitk.Flip(sitk.PermuteAxes(ct.to_sitk(), [2, 0, 1]), [True, False, True])  # keeps physical positions
    reoriented = lung_mask(Volume.from_sitk(image))
    assert reoriented.array.shape == (512, 512, 64)
    back = resample_like(reoriented, ct, interpolator="nearest").array > 0
    score = dice(back, ours)
    print(f"Dice after re-orientation: {score:.4f}")
    assert score > 0.98


def test_report_script_writes_picture(real_ct_dir: Path, report: ModuleType, tmp_path: Path) -> None:
    numbers = report.main([str(tmp_path), str(real_ct_dir)])
    picture = sitk.ReadImage(str(tmp_path / report.PNG_NAME))
    assert picture.GetNumberOfComponentsPerPixel() == 3 and picture.GetSize()[0] == 1024
    assert numbers["trachea_voxels_ours"] < numbers["trachea_voxels_crude"]


def test_lung_mask_rejects_non_ct() -> None:
    with pytest.raises(InputError, match="does not look like a CT in HU"):
        lung_mask(Volume(np.random.default_rng(0).uniform(0, 1, (8, 16, 16)).astype(np.float32)))
    with pytest.raises(InputError, match="NaN or infinite"):
        lung_mask(Volume(np.full((8, 16, 16), np.nan, np.float32)))
    body_without_lungs = np.full((20, 64, 64), -1000, np.int16)
    body_without_lungs[:, 8:56, 8:56] = 40
    with pytest.raises(InputError, match="no air-filled lung found"):
        lung_mask(Volume(body_without_lungs))


# ----------------------------------------------------------------------------------------------------------
# Layout composition and validation


def test_compose_layout_nodule_wins() -> None:
    lung = Volume(np.zeros((4, 5, 6), np.uint8))
    lung.array[1:3, 1:4, 1:5] = 7
    nodules = lung.with_array(np.zeros((4, 5, 6), bool))
    nodules.array[2, 2, 2:4] = True
    layout = compose_layout(lung, nodules).array
    assert layout.dtype == np.uint8
    assert np.count_nonzero(layout == NODULE) == 2 and np.count_nonzero(layout == LUNG) == 22
    assert np.array_equal(compose_layout(lung, None).array, (lung.array > 0).astype(np.uint8))


def ct_and_layout() -> tuple[Volume, Volume]:
    """A CT-like volume and a valid layout (lung with one nodule) on the same grid."""
    layout = synthetic_layout()
    layout = add_nodule(layout, (0.0, 0.0, 0.0), 8.0)
    ct = layout.with_array(np.where(layout.array == LUNG, -850, 40).astype(np.int16))
    return ct, layout


def test_validate_layout_accepts_valid_and_nodule_free() -> None:
    ct, layout = ct_and_layout()
    validate_layout(ct, layout)
    validate_layout(ct, layout.with_array(np.where(layout.array == NODULE, LUNG, layout.array).astype(np.uint8)))


def test_validate_layout_rejects_bad_cases() -> None:
    ct, layout = ct_and_layout()
    cases = {
        "differs from reference spacing": (ct, Volume(layout.array, layout.origin, (1.0, 1.0, 1.0), layout.direction)),
        r"labels \[5\] outside": (ct, layout.with_array(np.where(layout.array == NODULE, 5, layout.array))),
        "no lung voxels": (ct, layout.with_array(np.where(layout.array == LUNG, BACKGROUND, layout.array))),
        "NaN or infinite": (ct.with_array(np.where(layout.array == NODULE, np.nan, ct.array).astype(np.float32)),
                            layout),
        "does not look like a CT": (ct.with_array((ct.array + 2000).astype(np.int16)), layout),
    }
    far = layout.array.copy()
    far[2:4, 2:4, 2:4] = NODULE
    cases["nodule.*outside the lung"] = (ct, layout.with_array(far))
    for message, (image, labels) in cases.items():
        with pytest.raises(InputError, match=message):
            validate_layout(image, labels)


def test_layout_labels_refuse_a_ct_and_foreign_labels() -> None:
    ct, layout = ct_and_layout()
    assert validate_labels(layout).tolist() == [BACKGROUND, LUNG, NODULE]
    with pytest.raises(InputError, match=r"ct.nrrd holds labels \[-850, 40\] outside .* it looks like an image"):
        validate_labels(ct, "ct.nrrd")
    odd = layout.with_array(np.where(layout.array == NODULE, 3, layout.array).astype(np.uint8))
    odd.array[0, 0, 0] = 255
    with pytest.raises(InputError, match=r"holds labels \[3, 255\] outside \{0 background, 1 lung, 2 nodule\}; relabel"):
        validate_labels(odd)


def test_validate_layout_accepts_nodule_touching_lung() -> None:
    ct, layout = ct_and_layout()
    lung = layout.array == LUNG
    k = int(np.flatnonzero(lung.any(axis=(1, 2)))[-1]) + 1  # the slice just beyond the lung
    touching = layout.array.copy()
    touching[k][lung[k - 1]] = NODULE
    validate_layout(ct, layout.with_array(touching))
    coarse = dict(origin=layout.origin, spacing=(5.6, 5.6, 6.0), direction=layout.direction)  # voxels above 5 mm
    validate_layout(Volume(ct.array, **coarse), Volume(touching, **coarse))
    gap = touching.copy()
    gap[k] = np.where(gap[k] == NODULE, 0, gap[k])
    gap[k + 1][lung[k - 1]] = NODULE  # one empty slice between lung and nodule: 12 mm away
    with pytest.raises(InputError, match="outside the lung"):
        validate_layout(Volume(ct.array, **coarse), Volume(gap, **coarse))


# ----------------------------------------------------------------------------------------------------------
# Parametric nodules


@pytest.mark.parametrize("name", sorted(GRID_DIRECTIONS))
def test_nodule_mask_centre_and_volume(name: str) -> None:
    volume = grid(GRID_DIRECTIONS[name])
    centre = (3.3, -4.1, 5.2)
    for diameter in (10.0, 16.0):
        mask = nodule_mask(volume, centre, diameter)
        assert mask.dtype == bool and mask.shape == volume.array.shape
        assert np.linalg.norm(centroid_mm(volume, mask) - centre) <= max(volume.spacing)
        measured = np.count_nonzero(mask) * np.prod(volume.spacing)
        expected = 4.0 / 3.0 * np.pi * (diameter / 2) ** 3
        assert abs(measured / expected - 1.0) < 0.15


def test_nodule_irregularity_changes_shape_not_centre() -> None:
    volume = grid(GRID_DIRECTIONS["oblique"])
    centre = (1.0, 2.0, -3.0)
    round_mask = nodule_mask(volume, centre, 16.0)
    lobulated = nodule_mask(volume, centre, 16.0, irregularity=1.0, seed=4)
    assert dice(round_mask, lobulated) < 0.95
    assert not np.array_equal(lobulated, nodule_mask(volume, centre, 16.0, irregularity=1.0, seed=5))
    assert np.array_equal(lobulated, nodule_mask(volume, centre, 16.0, irregularity=1.0, seed=4))
    assert np.linalg.norm(centroid_mm(volume, lobulated) - centre) <= max(volume.spacing)


def test_nodule_parameters_validated() -> None:
    volume = grid(np.eye(3))
    for kwargs, message in [({"kind": "cystic"}, "kind 'cystic'"), ({"irregularity": 1.5}, "irregularity"),
                            ({"diameter_mm": -2.0}, "diameter")]:
        with pytest.raises(InputError, match=message):
            nodule_mask(volume, (0, 0, 0), **{"diameter_mm": 8.0, **kwargs})
    assert nodule_mask(volume, (0, 0, 0), 8.0, kind="ground-glass").any()
    assert not nodule_mask(volume, (500.0, 0, 0), 8.0).any()


def test_add_nodule_returns_new_layout() -> None:
    layout = synthetic_layout()
    before = layout.array.copy()
    result = add_nodule(layout, (2.0, -3.0, 1.0), 10.0, kind="part-solid", irregularity=0.3, seed=1)
    np.testing.assert_array_equal(layout.array, before)
    assert result is not layout and np.count_nonzero(result.array == NODULE) > 0
    with pytest.raises(InputError, match="outside the layout image"):
        add_nodule(layout, (400.0, 0.0, 0.0), 10.0)
    juxtapleural = add_nodule(layout, (34.0, 0.0, 0.0), 10.0)  # centre 4 mm beyond the lung, nodule touching it
    assert layout.array[tuple(np.round(physical_to_index(layout, (34.0, 0.0, 0.0))).astype(int)[::-1])] == BACKGROUND
    validate_labels(juxtapleural)
    with pytest.raises(InputError, match="neither lies in nor touches the lung"):
        add_nodule(layout, (46.0, 0.0, 0.0), 10.0)  # 11 mm from the lung
    assert np.any(add_nodule(layout, (46.0, 0.0, 0.0), 10.0, require_in_lung=False).array == NODULE)


def test_add_nodule_refuses_a_nodule_larger_than_the_lung_or_the_image() -> None:
    layout = synthetic_layout()  # an ellipsoid lung of semi-axes 30 x 25 x 30 mm: the largest ball inside is ~50 mm,
    # a little less measured between voxel centres (2 mm slices)
    assert np.any(add_nodule(layout, (0.0, 0.0, 0.0), 45.0).array == NODULE)
    with pytest.raises(InputError, match=r"diameter 60 mm is larger than the largest ball that fits in the lung \(4\d.\d mm\)"):
        add_nodule(layout, (0.0, 0.0, 0.0), 60.0)
    extent = min(np.multiply(layout.array.shape[::-1], layout.spacing))  # 76.8 mm
    assert np.any(add_nodule(layout, (0.0, 0.0, 0.0), 60.0, require_in_lung=False).array == NODULE)
    with pytest.raises(InputError, match="larger than the image's smallest extent"):
        add_nodule(layout, (0.0, 0.0, 0.0), extent + 1, require_in_lung=False)
    for diameter in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="diameter"):
            add_nodule(layout, (0.0, 0.0, 0.0), diameter)


def test_random_nodules_take_a_given_irregularity() -> None:
    layout = synthetic_layout()
    _, drawn = random_nodules(layout, 3, (4.0, 8.0), seed=5)
    _, given = random_nodules(layout, 3, (4.0, 8.0), seed=5, irregularity=0.8)
    assert [s["irregularity"] for s in given] == [0.8] * 3 and all(s["irregularity"] <= 0.5 for s in drawn)
    for key in ("diameter_mm", "kind", "seed"):  # the other draws stay those of the same seed
        assert [s[key] for s in given] == [s[key] for s in drawn]
    with pytest.raises(InputError, match="irregularity"):
        random_nodules(layout, 1, seed=5, irregularity=1.5)


def test_random_nodules_deterministic_and_inside_lung() -> None:
    layout = synthetic_layout()
    first, specs = random_nodules(layout, 3, (4.0, 12.0), kinds=("solid", "ground-glass"), seed=11)
    again, specs_again = random_nodules(layout, 3, (4.0, 12.0), kinds=("solid", "ground-glass"), seed=11)
    other, _ = random_nodules(layout, 3, (4.0, 12.0), kinds=("solid", "ground-glass"), seed=12)
    np.testing.assert_array_equal(first.array, again.array)
    assert specs == specs_again and not np.array_equal(first.array, other.array)
    assert len(specs) == 3 and {"center_lps_mm", "diameter_mm", "kind", "irregularity"} <= set(specs[0])
    nodules = first.array == NODULE
    assert np.all(layout.array[nodules] == LUNG)
    single = [nodule_mask(layout, s["center_lps_mm"], s["diameter_mm"], irregularity=s["irregularity"],
                          seed=s["seed"]) for s in specs]
    assert np.count_nonzero(nodules) == sum(np.count_nonzero(m) for m in single)  # no overlap
    for spec in specs:
        i, j, k = np.round(physical_to_index(layout, spec["center_lps_mm"])).astype(int)
        assert first.array[k, j, i] == NODULE and 4.0 <= spec["diameter_mm"] <= 12.0
    with pytest.raises(InputError, match="no room left"):
        random_nodules(layout, 2, (50.0, 60.0))
