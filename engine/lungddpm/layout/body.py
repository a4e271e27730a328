"""The body in a chest CT and the air outside it, found without assuming that the lungs clear the image border.

A tight field of view (a clinical reconstruction, Slicer's Crop Volume) cuts the chest wall, so the lungs touch
the image border just as the air outside the body does; the border alone cannot tell the two apart. The body's
envelope can: per axial slice, the pixels with body tissue on both sides along their row, their column or one of
their two diagonals.
A lung cut by the border lies inside it, flanked by the cut chest wall; the air outside the body, also the air
that a table and the image border enclose, lies mostly outside it. So an air region of a slice is outside air
when most of it lies outside the envelope.

Voxels below PADDING_HU (values such as -2048 or -3024 outside the reconstruction circle) were never measured:
they are neither air nor tissue, and the reconstruction circle cuts the body like an image border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from lungddpm.io.volume import Volume, mask_image
from lungddpm.layout.morphology import bin_any, components, dilate1, erode1, slice_components

# The body and the lungs' structure are found on the CT binned to voxels of about this size (integer factors per
# axis), which keeps a 512 x 512 x 300 CT to seconds; lung boundaries and airways are refined on the full grid.
WORK_SPACING_MM = 2.0
# Air and aerated lung are about -1000 to -500 HU, fat about -100, soft tissue 0 to +100; -400 HU separates them
# even where thick slices blur lung with vessels (partial volume).
AIR_HU = -400.0
# Air measures about -1000 HU, with noise rarely below -1200 HU even at low dose; scanners pad the corners outside
# the reconstruction circle with -1024 (then it is air), -2000, -2048 or -3024 HU.
PADDING_HU = -1500.0
# The body is the tissue opened in-plane by one voxel of the binned CT (about 2 mm): sheets up to two such voxels
# thick (blankets, clothing, cables, thin shells of the table) do not shape its envelope. Where a thin chest wall
# goes too, the anterior and posterior walls still put the lungs inside the envelope along their columns.
BODY_OPENING_AXES = (1, 2)
# An air region of a slice lying outside the body's envelope by at least this fraction of its area is outside air.
# A lung cut by a straight image border lies wholly inside the envelope (the cut chest wall flanks it); one cut by
# a reconstruction circle pokes out only by the circular segment between the cut chest wall's ends (under a fifth
# of the lung's area in a slice). Air enclosed by a table and the image border lies wholly outside.
OUTSIDE_FRACTION = 0.5


@dataclass
class ChestAir:
    """A CT oriented to LPS (array axes inferior to superior, anterior to posterior, right to left), binned; its air.

    `air`, `padding`, `body` and `outside` are on the binned grid (bins of `factors` voxels, `spacing` mm, both in
    k, j, i order); `canonical` is the full-resolution LPS-oriented CT.
    """

    canonical: sitk.Image
    orientation: str
    factors: tuple[int, int, int]
    spacing: tuple[float, float, float]
    air: np.ndarray
    padding: np.ndarray
    body: np.ndarray
    outside: np.ndarray

    def to_input_grid(self, canonical_mask: np.ndarray, ct: Volume) -> Volume:
        """A uint8 mask on the LPS-oriented full grid, oriented back onto the input CT's grid."""
        if self.orientation == "LPS":  # the input's own array order
            return ct.with_array(canonical_mask.astype(np.uint8))
        back = sitk.DICOMOrient(mask_image(canonical_mask, self.canonical), self.orientation)
        return ct.with_array(sitk.GetArrayFromImage(back).astype(np.uint8))


def chest_air(ct: Volume) -> ChestAir:
    """Orient a CT in HU to LPS, bin it to about WORK_SPACING_MM and find its air, its body and the air outside it."""
    image = ct.to_sitk()
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    canonical = sitk.DICOMOrient(image, "LPS")
    factors = tuple(max(1, round(WORK_SPACING_MM / s)) for s in canonical.GetSpacing())[::-1]
    coarse = sitk.BinShrink(canonical, factors[::-1])
    padding = bin_any(sitk.GetArrayViewFromImage(canonical) < PADDING_HU, factors)
    air = is_air(sitk.GetArrayViewFromImage(coarse)) & ~padding
    body = body_mask(~air & ~padding)
    return ChestAir(canonical, orientation, factors, coarse.GetSpacing()[::-1], air, padding, body,
                    outside_air(air, body))


def is_air(hu: np.ndarray) -> np.ndarray:
    """Air (and aerated lung): measured voxels below AIR_HU, padding excluded."""
    return (hu < AIR_HU) & (hu >= PADDING_HU)


def body_mask(tissue: np.ndarray) -> np.ndarray:
    """The body: the largest component of the (binned) tissue after an in-plane opening by one voxel."""
    opened = dilate1(erode1(tissue, BODY_OPENING_AXES), BODY_OPENING_AXES)
    labels, sizes = components(opened)
    return labels == 1 if sizes.size else opened


def slice_envelopes(body: np.ndarray) -> np.ndarray:
    """The body's envelope per axial slice: pixels with body on both sides along their row, column or a diagonal."""
    return _between(body, axis=1) | _between(body, axis=2) | _between_diagonal(body, 1) | _between_diagonal(body, -1)


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """Pixels with mask before and after them along an axis."""
    before = np.logical_or.accumulate(mask, axis=axis)
    after = np.flip(np.logical_or.accumulate(np.flip(mask, axis), axis=axis), axis)
    return before & after


def _between_diagonal(mask: np.ndarray, slope: int) -> np.ndarray:
    """Pixels with mask before and after them along the diagonal that moves `slope` (1 or -1) columns per row."""
    before, after = np.zeros_like(mask), np.zeros_like(mask)
    columns = mask.shape[2]
    source = slice(0, columns - 1) if slope > 0 else slice(1, columns)  # a row's pixels that reach the next row
    target = slice(1, columns) if slope > 0 else slice(0, columns - 1)
    for j in range(1, mask.shape[1]):
        before[:, j, target] = before[:, j - 1, source] | mask[:, j - 1, source]
    for j in range(mask.shape[1] - 2, -1, -1):
        after[:, j, source] = after[:, j + 1, target] | mask[:, j + 1, target]
    return before & after


def outside_air(air: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The air outside the body: each face-connected air region of a slice lying mostly outside the body's envelope."""
    regions = slice_components(air)
    area = np.bincount(regions.ravel())
    area_out = np.bincount(regions[air & ~slice_envelopes(body)], minlength=area.size)
    outside = area_out >= OUTSIDE_FRACTION * area
    outside[0] = False
    return outside[regions]
