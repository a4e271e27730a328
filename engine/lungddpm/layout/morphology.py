"""Binary-mask operations in millimetres and per axial slice, shared by the lung mask, the body envelope and the report.

Arrays are indexed (k, j, i); spacings are given in the same (k, j, i) order. Per-slice operations run as one
SimpleITK call on the slices stacked into one tall 2-D image, each slice followed by an empty separator row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def with_spacing(mask: np.ndarray, spacing_kji: Sequence[float]) -> sitk.Image:
    """A uint8 SimpleITK image of a mask with the given spacing (array order) so that filters work in mm."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    return image


def distance_mm(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """The Euclidean distance in mm from each voxel to the nearest voxel of the mask (0 inside the mask)."""
    distance = sitk.SignedMaurerDistanceMap(with_spacing(mask, spacing_kji), insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def bounding_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the smallest box holding the mask, grown by a margin per axis and clipped to the array."""
    box = []
    for axis, pad in enumerate(margin):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(present[0] - pad, 0), min(present[-1] + pad + 1, mask.shape[axis])))
    return tuple(box)


def bin_any(mask: np.ndarray, factors_kji: Sequence[int]) -> np.ndarray:
    """Bin a mask like sitk.BinShrink (incomplete bins at the end dropped): a bin is set if any voxel is."""
    shape = [n // f for n, f in zip(mask.shape, factors_kji)]
    binned = np.zeros(shape, bool)
    for offset in itertools.product(*(range(f) for f in factors_kji)):  # one strided view per position in a bin
        binned |= mask[tuple(slice(o, o + n * f, f) for o, n, f in zip(offset, shape, factors_kji))]
    return binned


def upsample(coarse: np.ndarray, factors_kji: Sequence[int], fine_box: tuple[slice, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling of a binned array onto a box of the full grid (bins of `factors` voxels)."""
    index = [np.minimum(np.arange(s.start, s.stop) // f, n - 1) for s, f, n in zip(fine_box, factors_kji, coarse.shape)]
    return coarse[np.ix_(*index)]


def erode1(mask: np.ndarray, axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Binary erosion by one voxel along the given axes (face neighbours; outside the array counts as inside)."""
    return _with_face_neighbours(mask, np.minimum, axes)


def dilate1(array: np.ndarray, axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Dilation by one voxel along the given axes: a mask grows, a label image takes its neighbours' largest label."""
    return _with_face_neighbours(array, np.maximum, axes)


def _with_face_neighbours(array: np.ndarray, reduce: np.ufunc, axes: Sequence[int]) -> np.ndarray:
    """Combine each voxel with its face neighbours along the axes by np.minimum or np.maximum."""
    combined = array.copy()
    for axis in axes:
        before = tuple(slice(None, -1) if a == axis else slice(None) for a in range(array.ndim))
        after = tuple(slice(1, None) if a == axis else slice(None) for a in range(array.ndim))
        reduce(combined[before], array[after], out=combined[before])
        reduce(combined[after], array[before], out=combined[after])
    return combined


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face-connected components of a 3-D mask, labelled 1, 2, ... by decreasing size, and their sizes."""
    relabel = sitk.RelabelComponentImageFilter()
    labels = relabel.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    return sitk.GetArrayFromImage(labels), np.asarray(relabel.GetSizeOfObjectsInPixels(), dtype=np.int64)


def _stacked(mask: np.ndarray) -> sitk.Image:
    """The axial slices of a mask as one tall 2-D uint8 image, each slice followed by an empty row."""
    slices, rows, columns = mask.shape
    stacked = np.zeros((slices, rows + 1, columns), np.uint8)
    stacked[:, :rows] = mask
    return sitk.GetImageFromArray(stacked.reshape(-1, columns))


def _unstacked(image: sitk.Image, shape: Sequence[int]) -> np.ndarray:
    """The inverse of _stacked: a (slices, rows, columns) array without the separator rows."""
    slices, rows, columns = shape
    return sitk.GetArrayFromImage(image).reshape(slices, rows + 1, columns)[:, :rows]


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each axial slice of a mask (separator rows touch the image border: no hole crosses them)."""
    return _unstacked(sitk.BinaryFillhole(_stacked(mask)), mask.shape) > 0


def slice_components(mask: np.ndarray) -> np.ndarray:
    """The face-connected regions of each axial slice, labelled 1, 2, ... over the whole volume (0: background)."""
    return _unstacked(sitk.ConnectedComponent(_stacked(mask)), mask.shape)
