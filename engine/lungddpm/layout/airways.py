"""Trachea and main bronchi of a chest CT: found at the top as a round mid-line air region, then followed down.

They are not lung (layout label 0); the airways inside the lungs are. Arrays are indexed (k, j, i) with k from
inferior to superior, as lung_mask orients every CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lungddpm.layout.body import is_air
from lungddpm.layout.morphology import bounding_box, upsample, with_spacing

# The trachea in an axial slice: a round air region of 0.2 to 6 cm^2 (5 mm across in infants, 28 mm in adults)
# near the mid-line.
TRACHEA_AREA_MM2 = (20.0, 600.0)
TRACHEA_MIN_ROUNDNESS = 0.8
TRACHEA_MIDLINE_MM = 30.0
# Airways followed slice by slice downwards: an air region of at most the trachea's largest area that lies
# within this distance (in-plane) of the airway found in the slice above; larger regions are lung.
AIRWAY_REACH_MM = 5.0
# Partial volume in thick or interpolated slices can merge the airway with the lung in a slice or two; the airway is
# carried through such slices on its own footprint (it cannot grow there), for at most this distance.
AIRWAY_BRIDGE_MM = 6.0


class FineAir:
    """Full-resolution air masks of axial slices, limited to the (dilated) air of the binned CT inside the body."""

    def __init__(self, hu: np.ndarray, coarse_air: np.ndarray, factors_kji: Sequence[int]) -> None:
        self.hu, self.coarse_air, self.factors = hu, coarse_air, factors_kji
        self.slices = np.flatnonzero(coarse_air.any(axis=(1, 2))) * factors_kji[0]
        self.midline_i = np.nonzero(coarse_air.any(axis=1))[1].mean() * factors_kji[2]

    def __getitem__(self, k: int) -> np.ndarray:
        """The air of axial slice k inside the body."""
        return self.region(k, (slice(0, self.hu.shape[1]), slice(0, self.hu.shape[2])))

    def region(self, k: int, box: tuple[slice, slice]) -> np.ndarray:
        """The air inside the body of a box (rows, columns) of axial slice k."""
        coarse = self.coarse_air[min(k // self.factors[0], self.coarse_air.shape[0] - 1)]
        return is_air(self.hu[k][box]) & upsample(coarse, self.factors[1:], box)


def central_airways(air: FineAir, spacing_kji: Sequence[float]) -> np.ndarray:
    """Trachea and main bronchi on the full grid: the trachea at the top, then followed down slice by slice.

    An air region of a slice belongs to the airways when it is no larger than a trachea and lies within
    AIRWAY_REACH_MM of the airways of the slice above. Where none does (partial volume has merged the airway
    with the lung), the airway goes on as the air of its own footprint, for at most AIRWAY_BRIDGE_MM. Each
    slice is searched in a box around the airway above that any trachea-sized region within reach fits in.
    """
    airways = np.zeros(air.hu.shape, bool)
    seed = _trachea_seed(air, spacing_kji)
    if seed is None:
        return airways
    top, current = seed
    reach = [int(round(AIRWAY_REACH_MM / s)) for s in spacing_kji[1:]]
    margin = [r + int(np.ceil(2 * np.sqrt(TRACHEA_AREA_MM2[1] / np.pi) / s)) for r, s in zip(reach, spacing_kji[1:])]
    max_pixels = TRACHEA_AREA_MM2[1] / (spacing_kji[1] * spacing_kji[2])
    airways[top] = current
    bridged_mm = 0.0
    for k in range(top - 1, -1, -1):
        box = bounding_box(current, margin=margin)
        labels = _slice_labels(air.region(k, box))
        near = _dilate2d(current[box], reach)
        touched = np.unique(labels[near & (labels > 0)])
        small = touched[(np.bincount(labels.ravel())[touched] <= max_pixels)
                        & ~np.isin(touched, _cut_by_box(labels, box, current.shape))]
        bridged_mm = 0.0 if small.size else bridged_mm + spacing_kji[0]
        found = np.isin(labels, small) if small.size else (labels > 0) & current[box]
        current = np.zeros_like(current)
        current[box] = found
        if bridged_mm > AIRWAY_BRIDGE_MM or not current.any():
            break
        airways[k] = current
    return airways


def _cut_by_box(labels: np.ndarray, box: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """The labels of the regions that reach a side of a box lying inside the slice (they go on beyond the box)."""
    sides = [labels[0] if box[0].start > 0 else (), labels[-1] if box[0].stop < shape[0] else (),
             labels[:, 0] if box[1].start > 0 else (), labels[:, -1] if box[1].stop < shape[1] else ()]
    return np.unique(np.concatenate([np.ravel(side) for side in sides]).astype(labels.dtype))


def _trachea_seed(air: FineAir, spacing_kji: Sequence[float]) -> tuple[int, np.ndarray] | None:
    """The highest axial slice (in the upper half of the body's air) with a trachea-like region, and the region."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    for k in range(air.slices[-1], (air.slices[0] + air.slices[-1]) // 2, -1):
        labels = sitk.ConnectedComponent(with_spacing(air[k], spacing_kji[1:]))
        stats.Execute(labels)
        for label in stats.GetLabels():
            if (TRACHEA_AREA_MM2[0] <= stats.GetPhysicalSize(label) <= TRACHEA_AREA_MM2[1]
                    and stats.GetRoundness(label) >= TRACHEA_MIN_ROUNDNESS
                    and abs(stats.GetCentroid(label)[0] - air.midline_i * spacing_kji[2]) <= TRACHEA_MIDLINE_MM):
                return k, sitk.GetArrayFromImage(labels) == label
    return None


def _slice_labels(mask2d: np.ndarray) -> np.ndarray:
    """The connected regions of one axial slice, labelled 1, 2, ..."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask2d.astype(np.uint8))))


def _dilate2d(mask2d: np.ndarray, radius_ji: Sequence[int]) -> np.ndarray:
    """A 2-D binary dilation with an elliptic kernel of the given radii (in pixels, rows then columns)."""
    image = sitk.GetImageFromArray(mask2d.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, list(radius_ji[::-1]), sitk.sitkBall)) > 0
