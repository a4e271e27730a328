"""The automatic lung mask: both lungs of a chest CT in HU, without trachea and main bronchi (classical, CPU)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, mask_image
from lungddpm.layout.labels import BACKGROUND, LUNG, require_ct_like

# Aerated lung is about -900 to -500 HU at inspiration, fat about -100, soft tissue 0 to +100. A threshold
# of -400 HU keeps the lung even where 5 mm slices blur it with vessels (partial volume) and drops all tissue.
AIR_HU = -400.0
# The trachea in an axial slice: a round air region of 0.5 to 6 cm^2 (8 to 28 mm across) near the mid-line.
TRACHEA_AREA_MM2 = (50.0, 600.0)
TRACHEA_MIN_ROUNDNESS = 0.8
TRACHEA_MIDLINE_MM = 30.0
# Airways followed slice by slice downwards: an air region of at most the trachea's largest area that lies
# within this distance (in-plane) of the airway found in the slice above; larger regions are lung.
AIRWAY_REACH_MM = 5.0
# The lungs' structure is found on the CT binned to voxels of about this size (integer factors per axis).
WORK_SPACING_MM = 1.5
# A lung is an air component holding at least this fraction of the largest one (drops bowel gas).
LUNG_MIN_FRACTION = 0.1
# Two lungs that touch (anterior junction) are split at the first of these erosion depths that leaves two
# large cores; each voxel then goes to the nearer core.
SPLIT_DEPTHS_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
# Closing radius that takes in the vessels at the lung border and smooths the mask.
CLOSING_MM = 5.0

_NO_LUNG = "CT: no air-filled lung found inside the body; give a chest CT in HU that shows the lungs"


def lung_mask(ct: Volume) -> Volume:
    """Segment both lungs of a CT in HU (uint8 0/1, same grid), excluding trachea and main bronchi."""
    require_ct_like(ct, "CT")
    image = ct.to_sitk()
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    canonical = sitk.DICOMOrient(image, "LPS")  # array axes become (inferior to superior, posterior, left)
    mask = mask_image(_segment_lungs(canonical), canonical)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, orientation))
    return ct.with_array(back.astype(np.uint8))


def _segment_lungs(canonical: sitk.Image) -> np.ndarray:
    """The lung mask of a CT whose array axes run (inferior to superior, anterior to posterior, right to left).

    The lungs' structure (body, components, split, smoothing) is found on the CT binned to about
    WORK_SPACING_MM, which keeps a 512 x 512 x 300 CT to seconds; the central airways, whose thin walls
    binning would blur, are followed on the full grid, and the lung boundary is refined on the full grid.
    """
    factors = [max(1, round(WORK_SPACING_MM / s)) for s in canonical.GetSpacing()][::-1]
    coarse = sitk.BinShrink(canonical, factors[::-1])
    inner = _air_inside_body(sitk.GetArrayFromImage(coarse) < AIR_HU)
    if not inner.any():
        raise InputError(_NO_LUNG)
    hu = sitk.GetArrayViewFromImage(canonical)
    airways = _central_airways(_FineAir(hu, _dilate1(inner), factors), canonical.GetSpacing()[::-1])
    labels = _coarse_lungs(inner & ~_bin_any(airways, factors), coarse.GetSpacing()[::-1])
    return _refine(hu, labels, airways, factors)


def _coarse_lungs(inner: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Each lung labelled (1, 2, ...), smoothed and apart from the other, from the air inside the body."""
    lungs = _large_components(inner)
    box = _bounding_box(lungs, margin=[int(np.ceil(CLOSING_MM / s)) + 1 for s in spacing_kji])
    labels = np.zeros(inner.shape, np.uint8)
    labels[box] = _separate(_smooth(_split_lungs(lungs[box], spacing_kji), spacing_kji))
    return labels


def _refine(hu: np.ndarray, labels: np.ndarray, airways: np.ndarray, factors_kji: Sequence[int]) -> np.ndarray:
    """The full-grid mask: the coarse lungs' interior plus the air voxels within one coarse voxel of them."""
    near = _dilate1(labels)
    coarse_box = _bounding_box(near > 0, margin=(0, 0, 0))
    box = tuple(slice(s.start * f, n if s.stop == c else s.stop * f)
                for s, f, c, n in zip(coarse_box, factors_kji, labels.shape, hu.shape))
    near = _upsample(near, factors_kji, box)
    air = (hu[box] < AIR_HU) & ~airways[box]
    fine = np.where(air, near, _upsample(labels * _erode1(labels > 0), factors_kji, box))
    holes = _fill_slices(fine > 0) & (fine == 0)
    fine[holes] = near[holes]
    mask = np.zeros(hu.shape, bool)
    mask[box] = _large_components(_separate(fine) > 0)
    return mask


def _bin_any(mask: np.ndarray, factors_kji: Sequence[int]) -> np.ndarray:
    """Bin a mask like sitk.BinShrink (incomplete bins at the end dropped): a bin is set if any voxel is."""
    shape = [n // f for n, f in zip(mask.shape, factors_kji)]
    trimmed = mask[tuple(slice(0, n * f) for n, f in zip(shape, factors_kji))]
    bins = [size for pair in zip(shape, factors_kji) for size in pair]  # (K, fk, J, fj, I, fi)
    return trimmed.reshape(bins).any(axis=(1, 3, 5))


def _upsample(coarse: np.ndarray, factors_kji: Sequence[int], fine_box: tuple[slice, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling of a binned array onto a box of the full grid (bins of `factors` voxels)."""
    index = [np.minimum(np.arange(s.start, s.stop) // f, n - 1) for s, f, n in zip(fine_box, factors_kji, coarse.shape)]
    return coarse[np.ix_(*index)]


def _erode1(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by one voxel (face neighbours; outside the array counts as inside the mask)."""
    return _with_face_neighbours(mask, np.minimum)


def _dilate1(array: np.ndarray) -> np.ndarray:
    """Dilation by one voxel (face neighbours): a mask grows, a label image takes its neighbours' largest label."""
    return _with_face_neighbours(array, np.maximum)


def _with_face_neighbours(array: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """Combine each voxel with its six face neighbours by np.minimum or np.maximum."""
    combined = array.copy()
    for axis in range(array.ndim):
        before = tuple(slice(None, -1) if a == axis else slice(None) for a in range(array.ndim))
        after = tuple(slice(1, None) if a == axis else slice(None) for a in range(array.ndim))
        reduce(combined[before], array[after], out=combined[before])
        reduce(combined[after], array[before], out=combined[after])
    return combined


def _air_inside_body(air: np.ndarray) -> np.ndarray:
    """Air not connected (in 3-D) to the in-plane border of the image, i.e. not outside the body."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(air.astype(np.uint8))))
    inside = np.ones(labels.max() + 1, bool)
    inside[0] = False
    inside[labels[:, [0, -1], :]] = False
    inside[labels[:, :, [0, -1]]] = False
    return inside[labels]


def _large_components(mask: np.ndarray) -> np.ndarray:
    """The components holding at least LUNG_MIN_FRACTION of the largest one; InputError when there is none."""
    relabel = sitk.RelabelComponentImageFilter()  # labels 1, 2, ... by decreasing size
    labels = relabel.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    sizes = np.asarray(relabel.GetSizeOfObjectsInPixels())
    if sizes.size == 0:
        raise InputError(_NO_LUNG)
    kept = int(np.count_nonzero(sizes >= LUNG_MIN_FRACTION * sizes[0]))
    return sitk.GetArrayFromImage(sitk.BinaryThreshold(labels, 1, kept, 1, 0)) > 0


def _bounding_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the smallest box holding the mask, grown by a margin per axis and clipped to the array."""
    box = []
    for axis, pad in enumerate(margin):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(present[0] - pad, 0), min(present[-1] + pad + 1, mask.shape[axis])))
    return tuple(box)


def _slice_labels(mask2d: np.ndarray) -> np.ndarray:
    """The connected regions of one axial slice, labelled 1, 2, ..."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask2d.astype(np.uint8))))


class _FineAir:
    """Full-resolution air masks of axial slices, limited to the (dilated) air of the binned CT inside the body."""

    def __init__(self, hu: np.ndarray, coarse_air: np.ndarray, factors_kji: Sequence[int]) -> None:
        self.hu, self.coarse_air, self.factors = hu, coarse_air, factors_kji
        self.slices = np.flatnonzero(coarse_air.any(axis=(1, 2))) * factors_kji[0]
        self.midline_i = np.nonzero(coarse_air.any(axis=1))[1].mean() * factors_kji[2]

    def __getitem__(self, k: int) -> np.ndarray:
        """The air of axial slice k inside the body."""
        coarse = self.coarse_air[min(k // self.factors[0], self.coarse_air.shape[0] - 1)]
        whole_slice = (slice(0, self.hu.shape[1]), slice(0, self.hu.shape[2]))
        return (self.hu[k] < AIR_HU) & _upsample(coarse, self.factors[1:], whole_slice)


def _central_airways(air: _FineAir, spacing_kji: Sequence[float]) -> np.ndarray:
    """Trachea and bronchi: found at the top as a round mid-line air region, then followed down slice by slice.

    An air region of a slice belongs to the airways when it is no larger than a trachea and lies within
    AIRWAY_REACH_MM of the airways of the slice above.
    """
    airways = np.zeros(air.hu.shape, bool)
    seed = _trachea_seed(air, spacing_kji)
    if seed is None:
        return airways
    top, current = seed
    reach = [int(round(AIRWAY_REACH_MM / s)) for s in spacing_kji[1:]]
    max_pixels = TRACHEA_AREA_MM2[1] / (spacing_kji[1] * spacing_kji[2])
    airways[top] = current
    for k in range(top - 1, -1, -1):
        labels = _slice_labels(air[k])
        box = _bounding_box(current, margin=reach)
        near = np.zeros_like(current)
        near[box] = _dilate2d(current[box], reach)
        touched = np.unique(labels[near & (labels > 0)])
        small = touched[np.bincount(labels.ravel())[touched] <= max_pixels]
        if small.size == 0:
            break
        current = np.isin(labels, small)
        airways[k] = current
    return airways


def _trachea_seed(air: _FineAir, spacing_kji: Sequence[float]) -> tuple[int, np.ndarray] | None:
    """The highest axial slice (in the upper half of the body's air) with a trachea-like region, and the region."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    for k in range(air.slices[-1], (air.slices[0] + air.slices[-1]) // 2, -1):
        labels = sitk.ConnectedComponent(_with_spacing(air[k], spacing_kji[1:]))
        stats.Execute(labels)
        for label in stats.GetLabels():
            if (TRACHEA_AREA_MM2[0] <= stats.GetPhysicalSize(label) <= TRACHEA_AREA_MM2[1]
                    and stats.GetRoundness(label) >= TRACHEA_MIN_ROUNDNESS
                    and abs(stats.GetCentroid(label)[0] - air.midline_i * spacing_kji[2]) <= TRACHEA_MIDLINE_MM):
                return k, sitk.GetArrayFromImage(labels) == label
    return None


def _dilate2d(mask2d: np.ndarray, radius_ji: Sequence[int]) -> np.ndarray:
    """A 2-D binary dilation with an elliptic kernel of the given radii (in pixels, rows then columns)."""
    image = sitk.GetImageFromArray(mask2d.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, list(radius_ji[::-1]), sitk.sitkBall)) > 0


def _split_lungs(lungs: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Label each lung (1, 2, ...); a single component holding both lungs is cut between its two deepest cores."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(lungs.astype(np.uint8))))
    if labels.max() > 1:
        return labels.astype(np.uint8)
    depth = _distance_mm(~lungs, spacing_kji)
    for depth_mm in SPLIT_DEPTHS_MM:
        cores = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(
            sitk.GetImageFromArray((depth > depth_mm).astype(np.uint8)))))
        sizes = np.bincount(cores.ravel())
        if sizes.size > 2 and sizes[2] >= LUNG_MIN_FRACTION * sizes[1]:
            nearer_first = _distance_mm(cores == 1, spacing_kji) <= _distance_mm(cores == 2, spacing_kji)
            return np.where(nearer_first, 1, 2).astype(np.uint8) * lungs
    return labels.astype(np.uint8)


def _distance_mm(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """The Euclidean distance in mm from each voxel to the nearest voxel of the mask (0 inside the mask)."""
    distance = sitk.SignedMaurerDistanceMap(_with_spacing(mask, spacing_kji), insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def _smooth(labels: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Close each lung with a CLOSING_MM ball and fill its holes slice by slice (vessels, enclosed nodules)."""
    smooth = np.zeros_like(labels)
    margin = [int(np.ceil(CLOSING_MM / s)) + 1 for s in spacing_kji]
    for value in np.unique(labels[labels > 0]):
        box = _bounding_box(labels == value, margin)
        dilated = _distance_mm(labels[box] == value, spacing_kji) <= CLOSING_MM
        closed = _fill_slices(_distance_mm(~dilated, spacing_kji) > CLOSING_MM)
        smooth[box][closed & (smooth[box] == 0)] = value
    return smooth


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each axial slice of a mask with one 2-D filter call.

    The slices are stacked into one tall 2-D image, each followed by an empty row: that row touches the left
    and right image borders, so it belongs to the outside and no hole can pass from one slice to the next.
    """
    slices, rows, columns = mask.shape
    stacked = np.zeros((slices, rows + 1, columns), np.uint8)
    stacked[:, :rows] = mask
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(stacked.reshape(-1, columns)))
    return sitk.GetArrayFromImage(filled).reshape(slices, rows + 1, columns)[:, :rows] > 0


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


def _with_spacing(mask: np.ndarray, spacing_kji: Sequence[float]) -> sitk.Image:
    """A uint8 SimpleITK image of a mask with the given spacing (array order) so that filters work in mm."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    return image
