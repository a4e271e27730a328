"""The automatic lung mask: both lungs of a chest CT in HU, without trachea and main bronchi (classical, CPU).

The air inside the body (layout.body: whatever the field of view cuts) is split into the central airways
(layout.airways), which are not lung, and the lungs: the large air components, each closed over its vessels
and filled where a thin solid structure is enclosed. Solid regions thicker than 2 x SOLID_MIN_RADIUS_MM
(consolidation, effusion, a mass) are not air and so not lung; a nodule belongs to the layout as label 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume
from lungddpm.layout.airways import FineAir, central_airways
from lungddpm.layout.body import chest_air, is_air
from lungddpm.layout.labels import BACKGROUND, require_ct_like
from lungddpm.layout.morphology import (bin_any, bounding_box, components, dilate1, distance_mm, erode1, fill_slices,
                                        upsample)

# A lung is an air component holding at least this fraction of the largest one (drops bowel gas).
LUNG_MIN_FRACTION = 0.1
# Two lungs that touch (anterior junction) are split at the first of these erosion depths that leaves two
# large cores; each voxel then goes to the nearer core.
SPLIT_DEPTHS_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
# Closing radius that takes in the vessels at the lung border and smooths the mask.
CLOSING_MM = 5.0
# Tissue the lungs enclose or indent is taken in (vessels, bronchial walls) unless a ball of this radius fits in
# it: pulmonary vessels inside the lung stay under 20 mm across; thicker tissue is disease or the chest wall.
SOLID_MIN_RADIUS_MM = 10.0

_NO_LUNG = "CT: no air-filled lung found inside the body; give a chest CT in HU that shows the lungs"


def lung_mask(ct: Volume) -> Volume:
    """Segment both lungs of a CT in HU (uint8 0/1, same grid), excluding trachea and main bronchi."""
    require_ct_like(ct, "CT")
    chest = chest_air(ct)
    inner = chest.air & ~chest.outside
    if not inner.any():
        raise InputError(_NO_LUNG)
    hu = sitk.GetArrayViewFromImage(chest.canonical)
    airways = central_airways(FineAir(hu, dilate1(inner), chest.factors), chest.canonical.GetSpacing()[::-1])
    labels = _coarse_lungs(inner & ~bin_any(airways, chest.factors), ~chest.air & ~chest.padding, chest.spacing)
    return chest.to_input_grid(_refine(hu, labels, airways, chest.factors), ct)


def _coarse_lungs(inner: np.ndarray, tissue: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Each lung labelled (1, 2, ...), smoothed and apart from the other, from the air inside the body."""
    lungs = _large_components(inner)
    box = bounding_box(lungs, margin=[int(np.ceil(CLOSING_MM / s)) + 1 for s in spacing_kji])
    labels = np.zeros(inner.shape, np.uint8)
    thick = _thick(tissue[box], spacing_kji)
    labels[box] = _separate(_smooth(_split_lungs(lungs[box], spacing_kji), thick, spacing_kji))
    return labels


def _refine(hu: np.ndarray, labels: np.ndarray, airways: np.ndarray, factors_kji: Sequence[int]) -> np.ndarray:
    """The full-grid mask: the coarse lungs' interior plus the air voxels within one coarse voxel of them.

    Holes left in a slice (vessels at the full grid's resolution) are filled where the coarse lungs reach in-plane,
    so that a solid region the coarse lungs leave out stays out, also in thick slices.
    """
    near = dilate1(labels)
    coarse_box = bounding_box(near > 0, margin=(0, 0, 0))
    box = tuple(slice(s.start * f, n if s.stop == c else s.stop * f)
                for s, f, c, n in zip(coarse_box, factors_kji, labels.shape, hu.shape))
    air = is_air(hu[box]) & ~airways[box]
    fine = np.where(air, upsample(near, factors_kji, box), upsample(labels * erode1(labels > 0), factors_kji, box))
    holes = fill_slices(fine > 0) & (fine == 0)
    fine[holes] = upsample(dilate1(labels, axes=(1, 2)), factors_kji, box)[holes]
    mask = np.zeros(hu.shape, bool)
    mask[box] = _large_components(_separate(fine) > 0)
    return mask


def _large_components(mask: np.ndarray) -> np.ndarray:
    """The components holding at least LUNG_MIN_FRACTION of the largest one; InputError when there is none."""
    labels, sizes = components(mask)
    if sizes.size == 0:
        raise InputError(_NO_LUNG)
    kept = int(np.count_nonzero(sizes >= LUNG_MIN_FRACTION * sizes[0]))
    return (labels > 0) & (labels <= kept)


def _split_lungs(lungs: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Label each lung (1, 2, ...); a single component holding both lungs is cut between its two deepest cores."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(lungs.astype(np.uint8))))
    if labels.max() > 1:
        return labels.astype(np.uint8)
    depth = distance_mm(~lungs, spacing_kji)
    for depth_mm in SPLIT_DEPTHS_MM:
        cores, sizes = components(depth > depth_mm)
        if sizes.size > 1 and sizes[1] >= LUNG_MIN_FRACTION * sizes[0]:
            nearer_first = distance_mm(cores == 1, spacing_kji) <= distance_mm(cores == 2, spacing_kji)
            return np.where(nearer_first, 1, 2).astype(np.uint8) * lungs
    return labels.astype(np.uint8)


def _smooth(labels: np.ndarray, thick: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Close each lung with a CLOSING_MM ball and fill its holes slice by slice, except where the tissue is thick.

    Vessels and airway walls come in; tissue where a ball of SOLID_MIN_RADIUS_MM fits (`thick`: a mass,
    consolidation, effusion, the chest wall and mediastinum) stays out, also where a closing across thick slices
    would take in the caps of a mass.
    """
    smooth = np.zeros_like(labels)
    margin = [int(np.ceil(CLOSING_MM / s)) + 1 for s in spacing_kji]
    for value in np.unique(labels[labels > 0]):
        box = bounding_box(labels == value, margin)
        dilated = distance_mm(labels[box] == value, spacing_kji) <= CLOSING_MM
        filled = fill_slices(distance_mm(~dilated, spacing_kji) > CLOSING_MM) & ~thick[box]
        smooth[box][filled & (smooth[box] == 0)] = value
    return smooth


def _thick(tissue: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """The opening of a tissue mask by a ball of SOLID_MIN_RADIUS_MM: the parts of it where such a ball fits.

    The ball's centres are voxel centres; each covers the voxels it reaches to within half a voxel, so that thick
    slices do not leave the caps of a thick region out of it.
    """
    cores = distance_mm(~tissue, spacing_kji) > SOLID_MIN_RADIUS_MM
    reach = SOLID_MIN_RADIUS_MM + 0.5 * max(spacing_kji)
    return tissue & (distance_mm(cores, spacing_kji) <= reach) if cores.any() else cores


def _separate(labels: np.ndarray) -> np.ndarray:
    """Clear each voxel that faces a voxel of a lower-labelled lung, so that each lung is its own component."""
    separated = labels.copy()
    for axis in range(labels.ndim):
        before = tuple(slice(None, -1) if a == axis else slice(None) for a in range(labels.ndim))
        after = tuple(slice(1, None) if a == axis else slice(None) for a in range(labels.ndim))
        first, second = labels[before], labels[after]
        clash = (first > 0) & (second > 0) & (first != second)
        separated[before][clash & (first > second)] = BACKGROUND
        separated[after][clash & (second > first)] = BACKGROUND
    return separated
