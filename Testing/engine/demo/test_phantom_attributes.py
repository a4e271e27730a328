"""Described phantom nodules: each drawn LIDC characteristic is measured in the phantom's HU and layout."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE, validate_layout

POINT = np.array((-80.0, 10.0, 20.0))  # mm, deep in the right lung of a phantom centred at (0, 0, 0)
STEP, SIZE = 0.7, 56  # a 39 mm cube of 0.7 mm voxels around the point: fine enough for spicules and edges
DIAMETER = 14.0
FINE = phantom_grid((SIZE,) * 3, (STEP,) * 3, origin=tuple(POINT - STEP * (SIZE - 1) / 2))


def described(prompt: str, *, seed: int = 0, noise_hu: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """CT (HU, float), nodule mask and record of one 14 mm nodule described by a prompt at POINT."""
    ph = make_phantom(FINE, body_center_lps_mm=(0.0, 0.0, 0.0), seed=seed, noise_hu=noise_hu,
                      nodules=[{"center_lps_mm": tuple(POINT), "diameter_mm": DIAMETER, "attributes": prompt}])
    (record,) = ph.nodules
    return ph.ct.array.astype(float), ph.layout.array == NODULE, record


def centre(hu: np.ndarray, half: int = 1) -> float:
    """Mean HU of the (2 half + 1)³ voxels at the nodule centre."""
    c = SIZE // 2
    return float(hu[c - half:c + half + 1, c - half:c + half + 1, c - half:c + half + 1].mean())


def surface_ratio(mask: np.ndarray) -> float:
    """Voxel faces on the mask's boundary over the area of the sphere of its volume (1.5 for a voxelised ball)."""
    faces = sum(np.count_nonzero(np.diff(np.pad(mask, 1).astype(np.int8), axis=a)) for a in range(3))
    return faces / (np.pi ** (1 / 3) * (6 * mask.sum()) ** (2 / 3))


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's voxels with a 6-neighbour outside it."""
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(mask.astype(np.uint8)), [1, 1, 1])) > 0
    return mask & ~eroded


def radius_spread(mask: np.ndarray) -> float:
    """Coefficient of variation of the boundary voxels' distances to the mask's centroid."""
    points = np.argwhere(mask)
    distance = np.linalg.norm(np.argwhere(boundary(mask)) - points.mean(axis=0), axis=1)
    return float(distance.std() / distance.mean())


def calcium_blobs(hu: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of 26-connected regions above 200 HU and the centroid (mm from the nodule centre) of all of them."""
    count = int(sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((hu > 200).astype(np.uint8)),
                                                               True)).max())
    points = np.argwhere(hu > 200)
    return count, (points.mean(axis=0) - (SIZE - 1) / 2) * STEP if len(points) else np.full(3, np.nan)


def test_texture_orders_mean_hu_and_solid_fraction():
    measured = {}
    for prompt in ("ground-glass", "part-solid", "solid"):
        hu, mask, _ = described(prompt, noise_hu=15.0)
        measured[prompt] = (hu[mask].mean(), np.mean(hu[mask] > -300))
    (ggo, ggo_solid), (part, part_solid), (solid, solid_solid) = measured.values()
    assert -650 < ggo < -400 and 0 < solid < 60 and ggo < part < solid
    # core volume 0, 1/2, 1 (vessels show through the ground-glass haze): part-solid's mean HU half-way
    assert ggo_solid < 0.05 and 0.4 < part_solid < 0.6 and solid_solid > 0.98
    assert abs(part - (ggo + solid) / 2) < 0.1 * (solid - ggo)


def test_calcification_patterns():
    hu, mask, _ = described("solid calcification")
    assert np.mean(hu[mask] > 200) > 0.99
    hu, mask, _ = described("no calcification")
    assert not (hu > 200).any()
    hu, _, _ = described("central calcification")
    count, where = calcium_blobs(hu)
    assert count == 1 and centre(hu) > 200 and np.linalg.norm(where) < 0.5
    hu, _, _ = described("popcorn calcification")
    assert calcium_blobs(hu)[0] == 4 and centre(hu) < 200
    hu, _, _ = described("laminated calcification")
    count, where = calcium_blobs(hu)
    assert count == 2 and centre(hu) < 200 and np.linalg.norm(where) < 0.5  # two concentric shells
    hu, _, _ = described("non-central calcification")
    count, where = calcium_blobs(hu)
    assert count == 1 and centre(hu) < 200 and np.linalg.norm(where) > 0.3 * DIAMETER / 2


@pytest.mark.parametrize("prompt, low, high", [("cavitary", -1024, -900), ("fat internal structure", -150, -50),
                                               ("fluid internal structure", -15, 20),
                                               ("soft tissue internal structure", 20, 60)])
def test_internal_structure_fills_the_centre(prompt, low, high):
    hu, mask, _ = described(prompt, noise_hu=15.0)
    assert low <= centre(hu) <= high and mask[SIZE // 2, SIZE // 2, SIZE // 2]  # a cavity is part of the nodule


def edge_contrast(hu: np.ndarray, mask: np.ndarray, shell_mm: float = 1.5) -> float:
    """Mean HU in the shell_mm inside the mask's surface minus the mean in the shell_mm outside it."""
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.GetImageFromArray(mask.astype(np.uint8)), insideIsPositive=True, squaredDistance=False,
        useImageSpacing=False)) * STEP
    inner, outer = mask & (distance <= shell_mm), ~mask & (distance >= -shell_mm)
    return float(hu[inner].mean() - hu[outer].mean())


def test_margin_sets_the_edge_gradient():
    sharp, medium, poor = (edge_contrast(*described(f"{degree} margins")[:2])
                           for degree in ("sharp", "medium", "poorly defined"))
    # sharp: the full step from solid (20..60 HU) to lung (about -850 HU) lies between the shells; poorly defined:
    # a 3 mm ramp centred on the surface, as wide as the two shells, leaves half of it (mean fractions 3/4 and 1/4)
    assert sharp > 800 and poor < medium < sharp and 0.4 < poor / sharp < 0.6


def test_spiculation_and_lobulation_roughen_the_boundary():
    hu, mask, _ = described("solid")
    smooth_ratio, smooth_spread = surface_ratio(mask & (hu > -400)), radius_spread(mask)
    hu, mask, _ = described("solid, marked spiculation")
    assert surface_ratio(mask & (hu > -400)) > smooth_ratio + 0.15
    spreads = [radius_spread(described(f"solid, {degree} lobulation")[1]) for degree in ("medium", "marked")]
    assert smooth_spread < spreads[0] < spreads[1] and spreads[1] > smooth_spread + 0.03


def test_sphericity_sets_the_axis_ratio_and_size_is_kept():
    ratios = {}
    for prompt in ("round", "ovoid", "linear"):
        _, mask, _ = described(prompt)
        eigen = np.linalg.eigvalsh(np.cov(np.argwhere(mask).T))
        ratios[prompt] = float(np.sqrt(eigen[-1] / eigen[0]))
        assert (6 * mask.sum() * STEP ** 3 / np.pi) ** (1 / 3) == pytest.approx(DIAMETER, rel=0.02)
    assert ratios["round"] < 1.05 and ratios["ovoid"] == pytest.approx(1.75, abs=0.1)
    assert ratios["linear"] == pytest.approx(2.5, abs=0.15)


def test_record_names_every_drawn_value():
    _, _, record = described("12 mm part-solid, spiculated")
    assert record["diameter_mm"] == DIAMETER  # the spec's diameter wins over the prompt's
    assert record["attributes"] == NoduleAttributes(texture=3, spiculation=5, internal_structure=1, calcification=6,
                                                    sphericity=5, margin=5, lobulation=1, diameter_mm=DIAMETER)
    ph = make_phantom(FINE, body_center_lps_mm=(0.0, 0.0, 0.0), noise_hu=0.0,
                      nodules=[{"center_lps_mm": tuple(POINT), "attributes": NoduleAttributes(diameter_mm=9.5)}])
    assert ph.nodules[0]["diameter_mm"] == 9.5


@pytest.mark.parametrize("spec, fragment", [
    ({"attributes": "malignant"}, "cannot draw them; leave them unknown"),
    ({"attributes": "solid", "kind": "solid"}, "describe a plain nodule"),
    ({"attributes": {"texture": 3}, "diameter_mm": None}, "needs its size"),
    ({"attributes": "spiky"}, "not in the nodule vocabulary"),
    ({"attributes": [3]}, "must be a NoduleAttributes"),
])
def test_described_spec_mistakes(spec, fragment):
    with pytest.raises(InputError, match=fragment):
        make_phantom(FINE, body_center_lps_mm=(0.0, 0.0, 0.0),
                     nodules=[{"center_lps_mm": tuple(POINT), "diameter_mm": DIAMETER, **spec}])


def test_random_described_nodules_lie_in_the_lung_and_repeat():
    first, again = (make_phantom(seed=5, nodules=3, nodule_attributes=True) for _ in range(2))
    assert np.array_equal(first.ct.array, again.ct.array) and first.nodules == again.nodules
    assert all(set(n["attributes"].to_dict()) == {"texture", "internal_structure", "calcification", "sphericity",
                                                  "margin", "lobulation", "spiculation", "diameter_mm"}
               for n in first.nodules)
    validate_layout(first.ct, first.layout)  # every nodule in or at the lung
    assert len(np.unique(sitk.GetArrayFromImage(sitk.ConnectedComponent(
        sitk.GetImageFromArray((first.layout.array == NODULE).astype(np.uint8)), True)))) == 1 + 3  # none touch
    with pytest.raises(InputError, match="for a count of random nodules"):
        make_phantom(nodules=[], nodule_attributes=True)


def test_a_described_nodule_leaves_plain_nodules_and_anatomy_unchanged():
    plain_spec = {"center_lps_mm": (70.0, 0.0, 0.0), "diameter_mm": 12.0, "kind": "part-solid"}
    alone = make_phantom(seed=3, nodules=[plain_spec])
    mixed = make_phantom(seed=3, nodules=[{"center_lps_mm": tuple(POINT), "diameter_mm": DIAMETER,
                                           "attributes": "ground-glass, cavitary, marked spiculation"}, plain_spec])
    reach = np.linalg.norm(np.argwhere(alone.layout.array >= 0)[:, ::-1] * alone.ct.spacing + alone.ct.origin - POINT,
                           axis=1).reshape(alone.ct.array.shape) > 2 * DIAMETER
    assert np.array_equal(alone.ct.array[reach], mixed.ct.array[reach])
    assert np.array_equal(alone.layout.array[reach], mixed.layout.array[reach])
    assert mixed.nodules[1] == alone.nodules[0]
