"""The automatic lung mask on real variety (lungddpm.layout.lung_mask).

Hard cases are made from the shared real CT (cropped so that the lungs touch and are cut by the borders,
partial coverage, resampled, noised, brightened as by contrast, padded outside a reconstruction circle,
rotated, prone) and compared, in the region both images cover, with the mask of the uncropped original
(itself checked against the crude layout and an independent trachea in test_layout.py). Phantoms with known truth add effusion, emphysema,
consolidation, a table with a blanket, a child's size and a juxtapleural tumour.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import rotation
from lungddpm.demo.phantom import Phantom, make_phantom, phantom_grid
from lungddpm.io.volume import Volume, index_to_physical, physical_to_index, resample_like
from lungddpm.layout.body import PADDING_HU
from lungddpm.layout.labels import BACKGROUND, NODULE, compose_layout, synthesis_region, validate_layout
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.morphology import distance_mm, fill_slices
from lungddpm.layout.nodules import add_nodule
from lungddpm.synthesis.regrid import synthesis_weight

MIN_DICE = 0.97  # in the region both images cover, against the uncropped original's mask
MAX_VOLUME_ERROR = 0.05
MAX_TRACHEA_FRACTION = 0.1  # of the reference trachea's voxels in the common region


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


# ----------------------------------------------------------------------------------------------------------
# Hard cases from the real CT


@pytest.fixture(scope="module")
def original(real_ct: tuple[Volume, Volume], report: ModuleType) -> tuple[Volume, np.ndarray, np.ndarray]:
    """The uncropped real CT, its lung mask and the report script's independent trachea."""
    ct, _ = real_ct
    return ct, lung_mask(ct).array > 0, report.trachea_reference(ct)


def crop(ct: Volume, k: tuple[int, int], j: tuple[int, int], i: tuple[int, int]) -> Volume:
    """A box of the CT (index ranges per axis), with its own geometry, as Slicer's Crop Volume makes it."""
    return Volume.from_sitk(ct.to_sitk()[i[0]:i[1], j[0]:j[1], k[0]:k[1]])


def resampled(ct: Volume, spacing: tuple[float, float, float], shift_mm: float = 0.0) -> Volume:
    """The CT resampled (linear) to another spacing, its first slice moved by shift_mm."""
    image = ct.to_sitk()
    size = [int(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    origin = np.add(image.GetOrigin(), (0.0, 0.0, shift_mm))
    return Volume.from_sitk(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                                          image.GetDirection(), -1024.0, image.GetPixelID()))


def rotated(ct: Volume, axis: tuple[float, float, float], degrees: float, spacing_mm: float = 2.5) -> Volume:
    """The CT resampled onto a grid turned about its centre (an oblique acquisition), slices spacing_mm apart."""
    image = ct.to_sitk()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    turn = rotation(axis, np.deg2rad(degrees))
    spacing = np.array([image.GetSpacing()[0], image.GetSpacing()[1], spacing_mm])
    size = np.array([image.GetSize()[0], image.GetSize()[1], int(image.GetSize()[2] * image.GetSpacing()[2] / spacing_mm)])
    grid = sitk.Image(size.tolist(), sitk.sitkInt16)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(turn.ravel().tolist())
    grid.SetOrigin((centre - turn @ (spacing * (size - 1) / 2)).tolist())
    return Volume.from_sitk(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0))


def low_dose(ct: Volume, sigma_hu: float = 80.0, seed: int = 0) -> Volume:
    """The CT with low-dose noise: Gaussian, correlated over about a voxel, of standard deviation sigma_hu."""
    white = np.random.default_rng(seed).normal(0.0, 1.0, ct.array.shape).astype(np.float32)
    noise = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(white), 0.7))
    return ct.with_array(np.clip(ct.array + noise * (sigma_hu / noise.std()), -1024, 3071).astype(np.int16))


def padded(ct: Volume, radius_px: float, value: int = -3024) -> Volume:
    """The CT with `value` outside a reconstruction circle of radius_px about the slice centre (cutting the lungs)."""
    _, j, i = np.ogrid[:1, :ct.array.shape[1], :ct.array.shape[2]]
    outside = (j - (ct.array.shape[1] - 1) / 2) ** 2 + (i - (ct.array.shape[2] - 1) / 2) ** 2 > radius_px ** 2
    return ct.with_array(np.where(outside, value, ct.array).astype(np.int16))


def contrast_enhanced(ct: Volume) -> Volume:
    """The CT as after an iodine bolus: blood and perfused soft tissue (20 to 80 HU) 250 HU brighter."""
    return ct.with_array(np.where((ct.array >= 20) & (ct.array <= 80), ct.array + 250, ct.array).astype(np.int16))


def flipped(ct: Volume) -> Volume:
    """The same physical image stored with its first array axis reversed (an axis flip of the file)."""
    return Volume.from_sitk(sitk.Flip(ct.to_sitk(), [True, False, False]))


HARD_CASES: dict[str, Callable[[Volume], Volume]] = {
    "cut-left-right": lambda ct: crop(ct, (0, 64), (100, 440), (110, 395)),
    "cut-all-sides-and-top-bottom": lambda ct: crop(ct, (10, 50), (180, 390), (110, 400)),
    "cut-and-flipped": lambda ct: flipped(crop(ct, (0, 64), (170, 400), (95, 420))),
    "bases-only": lambda ct: crop(ct, (0, 15), (0, 512), (0, 512)),
    "apices-only": lambda ct: crop(ct, (45, 64), (0, 512), (0, 512)),
    "0.8x0.8x3mm": lambda ct: resampled(ct, (0.8, 0.8, 3.0)),
    "cut-and-0.8x0.8x3mm": lambda ct: resampled(crop(ct, (0, 64), (100, 440), (110, 395)), (0.8, 0.8, 3.0)),
    "contrast-enhanced-and-cut": lambda ct: contrast_enhanced(crop(ct, (0, 64), (100, 440), (110, 395))),
    "1.5x1.5x5mm-shifted": lambda ct: resampled(ct, (1.5, 1.5, 5.0), shift_mm=2.5),
    "low-dose-noise": low_dose,
    "padding-3024-cuts-lungs": lambda ct: padded(ct, 165.0),
    "cut-and-padding-2048": lambda ct: padded(crop(ct, (0, 64), (60, 452), (60, 452)), 175.0, -2048),
    "rotated-20deg-in-plane": lambda ct: rotated(ct, (0.0, 0.0, 1.0), 20.0),
    "oblique-15deg": lambda ct: rotated(ct, (1.0, 0.3, 0.0), 15.0),
}


@pytest.mark.parametrize("case", sorted(HARD_CASES))
def test_hard_case_matches_the_uncropped_original(case: str, original: tuple[Volume, np.ndarray, np.ndarray]) -> None:
    ct, reference, trachea = original
    variant = HARD_CASES[case](ct)
    mask = lung_mask(variant)
    back = resample_like(mask.with_array(mask.array.astype(np.float32)), ct).array >= 0.5
    measured = variant.with_array((variant.array >= PADDING_HU).astype(np.uint8))
    common = resample_like(measured, ct, interpolator="nearest").array > 0
    ours, theirs = back & common, reference & common
    score, ratio = dice(ours, theirs), np.count_nonzero(ours) / np.count_nonzero(theirs)
    in_trachea = np.count_nonzero(ours & trachea) / max(np.count_nonzero(trachea & common), 1)
    print(f"{case}: Dice {score:.4f}, volume ratio {ratio:.4f}, trachea fraction {in_trachea:.3f}")
    assert score >= MIN_DICE and abs(ratio - 1.0) <= MAX_VOLUME_ERROR
    assert in_trachea <= MAX_TRACHEA_FRACTION


def test_hard_cases_are_hard(original: tuple[Volume, np.ndarray, np.ndarray]) -> None:
    """The crops really cut the lungs at the image borders, and the circle really cuts them."""
    ct, reference, _ = original
    lungs = crop(ct.with_array(reference.astype(np.uint8)), (10, 50), (180, 390), (110, 400)).array > 0
    assert all(face.any() for face in (lungs[0], lungs[-1], lungs[:, 0], lungs[:, -1], lungs[:, :, 0], lungs[:, :, -1]))
    sides = crop(ct.with_array(reference.astype(np.uint8)), (0, 64), (100, 440), (110, 395)).array > 0
    assert np.count_nonzero(sides[:, :, 0]) > 1000 and np.count_nonzero(sides[:, :, -1]) > 1000
    assert np.count_nonzero(reference & (padded(ct, 165.0).array < PADDING_HU)) > 10000


def test_prone_patient(original: tuple[Volume, np.ndarray, np.ndarray]) -> None:
    """The same anatomy turned upside down in the image (the patient lying prone): the mask turns with it."""
    ct, reference, _ = original
    prone = ct.with_array(np.ascontiguousarray(ct.array[:, ::-1]))
    assert dice(lung_mask(prone).array[:, ::-1] > 0, reference) >= 0.995


# ----------------------------------------------------------------------------------------------------------
# Phantoms with known truth


@pytest.fixture(scope="module")
def chest() -> tuple[Phantom, np.ndarray]:
    """A procedural chest CT (1.8 x 1.8 x 5 mm) with its exact lung label, and each voxel's LPS position (k, j, i, 3)."""
    phantom = make_phantom(phantom_grid((200, 160, 64), (1.8, 1.8, 5.0)), seed=1)
    k, j, i = np.indices(phantom.ct.array.shape)
    return phantom, index_to_physical(phantom.ct, np.stack([i, j, k], axis=-1))


def deepest_point(region: np.ndarray, grid: Volume) -> np.ndarray:
    """The LPS position of the voxel of a region farthest from the region's border."""
    depth = distance_mm(~region, grid.spacing[::-1])
    k, j, i = np.unravel_index(np.argmax(depth), region.shape)
    return index_to_physical(grid, (i, j, k))


def test_effusion_and_emphysema(chest: tuple[Phantom, np.ndarray]) -> None:
    """Fluid in the right lung's dependent part is not lung; the left lung's emphysema (below -950 HU) is."""
    phantom, position = chest
    lung = phantom.layout.array > 0
    x, y, z = position[..., 0], position[..., 1], position[..., 2]
    effusion = lung & (x < 0) & (y > 45.0)  # LPS: x < 0 is the right, y grows to posterior
    emphysema = lung & (x > 0) & (z > 0) & (phantom.ct.array < -500)
    hu = phantom.ct.array.copy()
    hu[effusion] = 15
    hu[emphysema] = np.random.default_rng(0).normal(-985.0, 10.0, np.count_nonzero(emphysema)).astype(np.int16)
    mask = lung_mask(phantom.ct.with_array(hu)).array > 0
    assert np.count_nonzero(effusion) > 10000 and np.count_nonzero(emphysema) > 40000
    assert np.count_nonzero(mask & effusion) <= 0.02 * np.count_nonzero(effusion)
    assert np.count_nonzero(mask & emphysema) >= 0.99 * np.count_nonzero(emphysema)
    assert dice(mask, lung & ~effusion) >= MIN_DICE


def test_consolidation_stays_out_and_vessels_stay_in(chest: tuple[Phantom, np.ndarray]) -> None:
    """A 35 mm consolidation inside a lung is not lung (not air); the lungs' vessels and airways are."""
    phantom, position = chest
    lung = phantom.layout.array > 0
    centre = deepest_point(lung & (position[..., 0] < 0), phantom.ct)
    consolidation = np.linalg.norm(position - centre, axis=-1) <= 17.5
    hu = np.where(consolidation, 40, phantom.ct.array).astype(np.int16)
    mask = lung_mask(phantom.ct.with_array(hu)).array > 0
    assert np.count_nonzero(mask & consolidation) <= 0.3 * np.count_nonzero(consolidation)
    vessels = lung & ~consolidation & (phantom.ct.array > -400)
    assert np.count_nonzero(vessels) > 5000 and np.count_nonzero(mask & vessels) >= 0.9 * np.count_nonzero(vessels)
    assert dice(mask, lung & ~consolidation) >= MIN_DICE


def test_table_and_blanket(chest: tuple[Phantom, np.ndarray]) -> None:
    """A cradle table under the patient (touching the back, cut by both borders, air below it) and a blanket."""
    phantom, position = chest
    x, y = position[..., 0], position[..., 1]
    body = fill_slices(phantom.ct.array > -500)
    skin = distance_mm(body, phantom.ct.spacing[::-1])  # mm outside the body
    table_top = 124.0 - 0.0004 * x ** 2  # a cradle: its sides rise
    hu = phantom.ct.array.copy()
    hu[(skin > 0) & (y > 100.0) & (y < table_top)] = 60  # a gel pad fills the gap: the body lies on the table
    hu[(y >= table_top) & (y < table_top + 6.0)] = 250
    blanket = ((skin > 8.0) & (skin <= 10.0) & (y < 5.0)) | ((skin > 0) & (skin <= 10.0) & (np.abs(y - 2.0) < 3.0))
    hu[blanket] = -100  # 2 mm of cloth 8 mm above the chest, closed to the body at the sides: air under it
    assert (hu[:, -1] > -400).sum() == 0 and (hu[:, :, 0] == 250).any()  # air below the table, table at the border
    mask = lung_mask(phantom.ct.with_array(hu)).array > 0
    assert dice(mask, phantom.layout.array > 0) >= MIN_DICE


def test_child_sized_chest(chest: tuple[Phantom, np.ndarray]) -> None:
    """The same chest at 45 % of the size (a young child's, trachea 6 mm across): both lungs, no trachea."""
    phantom, _ = chest
    child = Volume(phantom.ct.array, phantom.ct.origin, tuple(0.45 * s for s in phantom.ct.spacing), phantom.ct.direction)
    assert dice(lung_mask(child).array > 0, phantom.layout.array > 0) >= MIN_DICE


def test_juxtapleural_tumour_is_synthesised_whole(chest: tuple[Phantom, np.ndarray]) -> None:
    """A tumour at the chest wall: the mask leaves it out, the user's label 2 puts all of it in the synthesis region."""
    phantom, position = chest
    lung = phantom.layout.array > 0
    x, y, z = position[..., 0], position[..., 1], position[..., 2]
    lateral = lung & (np.abs(y) < 5.0) & (np.abs(z) < 5.0) & (x < 0)  # right lung, at mid height and depth
    centre = index_to_physical(phantom.ct, np.argwhere(lateral)[np.argmin(x[lateral])][::-1])  # at the chest wall
    tumour = np.linalg.norm(position - centre, axis=-1) <= 14.0
    ct = phantom.ct.with_array(np.where(tumour, 45, phantom.ct.array).astype(np.int16))
    mask = lung_mask(ct)
    assert np.count_nonzero((mask.array > 0) & tumour) <= 0.2 * np.count_nonzero(tumour)
    assert np.count_nonzero(tumour & ~lung) >= 0.3 * np.count_nonzero(tumour)  # it reaches into the chest wall
    layout = compose_layout(mask, ct.with_array(tumour.astype(np.uint8)))
    validate_layout(ct, layout)
    assert np.all(synthesis_region(layout)[tumour]) and np.all(synthesis_weight(layout, 4.0)[tumour] > 0)
    clicked = add_nodule(mask, centre, 20.0)  # the user clicks the tumour's centre, outside the lung mask
    assert mask.array[tuple(np.round(physical_to_index(mask, centre)).astype(int)[::-1])] == BACKGROUND
    assert np.count_nonzero(clicked.array == NODULE) > 0
