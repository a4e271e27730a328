"""Semantic layouts: label conventions, automatic lung masks, parametric nodules and validation.

A layout is a uint8 label image on the grid of its reference CT:

- ``BACKGROUND = 0``: everything outside the lungs;
- ``LUNG = 1``: lung parenchyma (airways inside the lungs included; trachea and main bronchi excluded);
- ``NODULE = 2``: nodule. A nodule voxel is lung tissue as well: the model sees label 2 as a lesion
  within the lung, so a nodule must lie inside the lung or touch it.

Every size and distance parameter is in millimetres and is converted per axis with the voxel spacing,
so that anisotropic grids (e.g. 0.7 x 0.7 x 5 mm) and any direction matrix are handled alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.polynomial import legendre

from .errors import InputError
from .volume import Volume, index_to_physical, physical_to_index, require_same_grid

BACKGROUND = 0
LUNG = 1
NODULE = 2
LABELS = (BACKGROUND, LUNG, NODULE)
NODULE_KINDS = ("solid", "part-solid", "ground-glass")

# Aerated lung is about -900 to -500 HU at inspiration, fat about -100, soft tissue 0 to +100. A threshold
# of -400 HU keeps the lung even where 5 mm slices blur it with vessels (partial volume) and drops all tissue.
AIR_HU = -400.0
# A CT in HU has air near -1000 and tissue near 0; an image without both is not a CT in HU.
CT_MIN_BELOW_HU = -500.0
CT_MAX_ABOVE_HU = 0.0
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
# A nodule must lie in the lung or within this distance of it (hand-drawn and thresholded labels leave
# fragments a voxel or two outside the lung label; a nodule placed in the heart is centimetres away).
NODULE_LUNG_TOLERANCE_MM = 5.0
# Two lungs that touch (anterior junction) are split at the first of these erosion depths that leaves two
# large cores; each voxel then goes to the nearer core.
SPLIT_DEPTHS_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
# Closing radius that takes in the vessels at the lung border and smooths the mask.
CLOSING_MM = 5.0
# Lobulation: the radius varies by up to this fraction of itself at irregularity 1.
LOBULATION_AMPLITUDE = 0.35
LOBULATION_DEGREES = (2, 4, 6)

_NO_LUNG = "CT: no air-filled lung found inside the body; give a chest CT in HU that shows the lungs"


def compose_layout(lung: Volume, nodules: Volume | None) -> Volume:
    """Make a layout from a binary lung mask and an optional binary nodule mask on the same grid (nodule wins)."""
    layout = np.where(lung.array != 0, LUNG, BACKGROUND).astype(np.uint8)
    if nodules is not None:
        require_same_grid(lung, nodules, names=("lung mask", "nodule mask"))
        layout[nodules.array != 0] = NODULE
    return lung.with_array(layout)


# ----------------------------------------------------------------------------------------------------------
# Checks


def _require_ct_like(ct: Volume, name: str) -> None:
    """Raise InputError when an image has non-finite values or an intensity range unlike a CT in HU."""
    if np.issubdtype(ct.array.dtype, np.floating) and not np.all(np.isfinite(ct.array)):
        count = int(np.count_nonzero(~np.isfinite(ct.array)))
        raise InputError(f"{name}: {count} voxels are NaN or infinite; give a CT with finite HU values")
    low, high = float(ct.array.min()), float(ct.array.max())
    if low >= CT_MIN_BELOW_HU or high < CT_MAX_ABOVE_HU:
        raise InputError(f"{name} does not look like a CT in HU: intensities range {low:g} .. {high:g}, but a chest "
                         f"CT has air near -1000 HU and tissue near 0 HU; give the CT volume rescaled to HU")


def validate_layout(ct: Volume, layout: Volume, *, ct_name: str = "reference", layout_name: str = "layout") -> None:
    """Raise InputError unless the layout fits the CT: same grid, labels 0/1/2, lungs, nodules in or at the lung."""
    require_same_grid(ct, layout, names=(ct_name, layout_name))
    _require_ct_like(ct, ct_name)
    labels = np.unique(layout.array)
    unknown = [value for value in labels.tolist() if value not in LABELS]
    if unknown:
        raise InputError(f"{layout_name} holds labels {unknown} outside {{0 background, 1 lung, 2 nodule}}; "
                         f"relabel it")
    if LUNG not in labels:
        raise InputError(f"{layout_name} has no lung voxels (label {LUNG}); add a lung mask (e.g. lung_mask)")
    if NODULE in labels:
        _require_nodules_at_lung(layout, layout_name)


def _require_nodules_at_lung(layout: Volume, layout_name: str) -> None:
    """Raise InputError when a nodule (26-connected) has no voxel within NODULE_LUNG_TOLERANCE_MM of the lung.

    On grids coarser than that, a nodule voxel that touches a lung voxel (up to the voxel diagonal) counts as at
    the lung: distances are measured between voxel centres.
    """
    lung = _image_like(layout.array == LUNG, layout)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(lung, insideIsPositive=False, squaredDistance=False,
                                                                   useImageSpacing=True))
    near_lung = distance <= max(NODULE_LUNG_TOLERANCE_MM, float(np.linalg.norm(layout.spacing)) + 1e-6)
    nodule_image = _image_like(layout.array == NODULE, layout)
    nodules = sitk.GetArrayFromImage(sitk.ConnectedComponent(nodule_image, True))
    touching = np.unique(nodules[near_lung & (nodules > 0)])
    outside = np.setdiff1d(np.arange(1, nodules.max() + 1), touching)
    if outside.size:
        k, j, i = (np.mean(axis) for axis in np.nonzero(nodules == outside[0]))
        centre = index_to_physical(layout, (i, j, k))
        raise InputError(f"{layout_name}: {outside.size} nodule(s) lie entirely outside the lung (farther than "
                         f"{NODULE_LUNG_TOLERANCE_MM:g} mm from it), e.g. the one centred at LPS "
                         f"{np.round(centre, 1).tolist()} mm; move them into the lung or relabel them")


# ----------------------------------------------------------------------------------------------------------
# Automatic lung mask


def lung_mask(ct: Volume) -> Volume:
    """Segment both lungs of a CT in HU (uint8 0/1, same grid), excluding trachea and main bronchi."""
    _require_ct_like(ct, "CT")
    image = ct.to_sitk()
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    canonical = sitk.DICOMOrient(image, "LPS")  # array axes become (inferior to superior, posterior, left)
    mask = _image_like(_segment_lungs(canonical), canonical)
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


def _image_like(mask: np.ndarray, grid: Volume | sitk.Image) -> sitk.Image:
    """A uint8 SimpleITK image of a mask carrying the geometry of a Volume or an image."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    if isinstance(grid, Volume):
        image.SetOrigin(grid.origin)
        image.SetSpacing(grid.spacing)
        image.SetDirection(grid.direction)
    else:
        image.CopyInformation(grid)
    return image


# ----------------------------------------------------------------------------------------------------------
# Parametric nodules


def _check_nodule_parameters(diameter_mm: float, kind: str, irregularity: float) -> None:
    """Raise InputError for a non-positive diameter, an unknown kind or an irregularity outside [0, 1]."""
    if kind not in NODULE_KINDS:
        raise InputError(f"nodule kind {kind!r} is not known; use one of {', '.join(NODULE_KINDS)}")
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise InputError(f"nodule diameter {diameter_mm} mm must be a positive number of millimetres")
    if not 0.0 <= irregularity <= 1.0:
        raise InputError(f"nodule irregularity {irregularity} must lie in [0, 1] (0 round, 1 strongly lobulated)")


def _max_radius_mm(diameter_mm: float, irregularity: float) -> float:
    """The largest radius a nodule of this diameter and irregularity can reach."""
    return diameter_mm / 2.0 * (1.0 + LOBULATION_AMPLITUDE * irregularity)


def _lobulation(directions: np.ndarray, irregularity: float, seed: int) -> np.ndarray:
    """Relative radius change per unit direction: random even Legendre terms about random axes, in [-A, A].

    Even degrees keep the shape point-symmetric, so lobulation never moves the nodule's centre.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.0, len(LOBULATION_DEGREES)) * rng.choice([-1.0, 1.0], len(LOBULATION_DEGREES))
    axes = rng.normal(size=(len(LOBULATION_DEGREES), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    change = np.zeros(directions.shape[:-1])
    for weight, axis, degree in zip(weights, axes, LOBULATION_DEGREES):
        change += weight * legendre.legval(directions @ axis, [0.0] * degree + [1.0])
    return LOBULATION_AMPLITUDE * irregularity * change / np.abs(weights).sum()


def nodule_mask(grid: Volume, center_lps_mm: Sequence[float], diameter_mm: float, *, kind: str = "solid",
                irregularity: float = 0.0, seed: int = 0) -> np.ndarray:
    """A boolean (k, j, i) mask of a sphere (lobulated if irregularity > 0) in physical mm on the grid."""
    _check_nodule_parameters(diameter_mm, kind, irregularity)
    mask = np.zeros(grid.array.shape, bool)
    box = _nodule_box(grid, center_lps_mm, _max_radius_mm(diameter_mm, irregularity))
    if box is None:
        return mask
    k, j, i = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    offset = index_to_physical(grid, np.stack([i, j, k], axis=-1)) - np.asarray(center_lps_mm, dtype=float)
    distance = np.linalg.norm(offset, axis=-1)
    directions = offset / np.maximum(distance, 1e-9)[..., None]
    radius = diameter_mm / 2.0 * (1.0 + _lobulation(directions, irregularity, seed))
    mask[box] = distance <= radius
    return mask


def _nodule_box(grid: Volume, center_lps_mm: Sequence[float], radius_mm: float) -> tuple[slice, ...] | None:
    """The (k, j, i) index box holding a ball of the radius about the centre, clipped; None when outside."""
    corners = np.array(np.meshgrid(*[[-radius_mm, radius_mm]] * 3, indexing="ij")).reshape(3, -1).T
    index = physical_to_index(grid, np.asarray(center_lps_mm, dtype=float) + corners)
    low = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)[::-1]
    high = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, grid.array.shape[::-1])[::-1]
    if np.any(high <= low):
        return None
    return tuple(slice(lo, hi) for lo, hi in zip(low, high))


def _voxel_at(grid: Volume, point_lps_mm: Sequence[float]) -> tuple[int, int, int] | None:
    """The (k, j, i) index of the voxel holding a physical point, or None outside the image."""
    i, j, k = np.round(physical_to_index(grid, point_lps_mm)).astype(int)
    inside = all(0 <= n < size for n, size in zip((k, j, i), grid.array.shape))
    return (int(k), int(j), int(i)) if inside else None


def add_nodule(layout: Volume, center_lps_mm: Sequence[float], diameter_mm: float, *, kind: str = "solid",
               irregularity: float = 0.0, seed: int = 0, require_in_lung: bool = True) -> Volume:
    """A new layout with a nodule (label 2) painted at an LPS centre in mm; the input is left unchanged."""
    voxel = _voxel_at(layout, center_lps_mm)
    if voxel is None:
        raise InputError(f"nodule centre LPS {list(center_lps_mm)} mm lies outside the layout image; "
                         f"pick a point inside the image")
    if require_in_lung and layout.array[voxel] not in (LUNG, NODULE):
        raise InputError(f"nodule centre LPS {list(center_lps_mm)} mm is not inside the lung (label {LUNG}); "
                         f"pick a point in the lung (or allow it: require_in_lung=False, lungddpm add-nodule --allow-outside-lung)")
    painted = layout.array.astype(np.uint8, copy=True)
    painted[nodule_mask(layout, center_lps_mm, diameter_mm, kind=kind, irregularity=irregularity, seed=seed)] = NODULE
    return layout.with_array(painted)


def random_nodules(layout: Volume, count: int, diameter_range_mm: tuple[float, float] = (4.0, 20.0), *,
                   kinds: Sequence[str] = ("solid",), seed: int = 0) -> tuple[Volume, list[dict]]:
    """Add `count` random, non-overlapping nodules lying inside the lung; deterministic for a seed."""
    low, high = diameter_range_mm
    if count < 0 or not 0 < low <= high:
        raise InputError(f"random_nodules needs count >= 0 and 0 < min <= max diameter; got count={count}, "
                         f"diameter_range_mm={diameter_range_mm}")
    for kind in kinds:
        _check_nodule_parameters(low, kind, 0.0)
    rng = np.random.default_rng(seed)
    depth_mm, voxels = _lung_depth(layout)
    centres = index_to_physical(layout, voxels[:, ::-1])
    specs: list[dict] = []
    for _ in range(count):
        spec = _draw_nodule(rng, (low, high), kinds)
        clearance = _max_radius_mm(spec["diameter_mm"], spec["irregularity"])
        free = depth_mm >= clearance
        for other in specs:
            reach = clearance + _max_radius_mm(other["diameter_mm"], other["irregularity"])
            free &= np.linalg.norm(centres - other["center_lps_mm"], axis=1) > reach
        if not free.any():
            raise InputError(f"no room left in the lung for nodule {len(specs) + 1} of {count} "
                             f"({spec['diameter_mm']:.1f} mm); lower count or diameter_range_mm")
        spec["center_lps_mm"] = tuple(float(v) for v in centres[rng.choice(np.flatnonzero(free))])
        specs.append(spec)
    painted = layout
    for spec in specs:
        painted = add_nodule(painted, spec["center_lps_mm"], spec["diameter_mm"], kind=spec["kind"],
                             irregularity=spec["irregularity"], seed=spec["seed"])
    return painted, specs


def _draw_nodule(rng: np.random.Generator, diameter_range_mm: tuple[float, float], kinds: Sequence[str]) -> dict:
    """Draw a nodule's diameter, kind, irregularity and shape seed (its centre is chosen afterwards)."""
    return {
        "diameter_mm": float(rng.uniform(*diameter_range_mm)),
        "kind": str(kinds[rng.integers(len(kinds))]),
        "irregularity": float(rng.uniform(0.0, 0.5)),
        "seed": int(rng.integers(2**31)),
    }


def _lung_depth(layout: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Distance in mm from each free lung voxel (label 1) to the nearest non-lung voxel, and their (k, j, i)."""
    lung = _image_like(layout.array == LUNG, layout)
    depth = sitk.SignedMaurerDistanceMap(lung, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    voxels = np.argwhere(layout.array == LUNG)
    if voxels.size == 0:
        raise InputError(f"the layout has no free lung voxels (label {LUNG}) to place nodules in; add a lung mask")
    return sitk.GetArrayFromImage(depth)[tuple(voxels.T)], voxels
