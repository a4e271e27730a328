"""Layout labels: the label values, composing a layout from masks, and checking a layout against its CT.

A layout is a uint8 label image on the grid of its reference CT:

- ``BACKGROUND = 0``: everything outside the lungs;
- ``LUNG = 1``: lung parenchyma (airways inside the lungs included; trachea and main bronchi excluded);
- ``NODULE = 2``: nodule. A nodule voxel is lung tissue as well: the model sees label 2 as a lesion
  within the lung, so a nodule must lie inside the lung or touch it. A nodule that touches the lung may
  reach beyond it (a juxtapleural tumour into the chest wall or the mediastinum, where an automatic lung
  mask ends at the tumour): every nodule voxel belongs to the region synthesis changes (synthesis_region).

Every size and distance parameter is in millimetres and is converted per axis with the voxel spacing,
so that anisotropic grids (e.g. 0.7 x 0.7 x 5 mm) and any direction matrix are handled alike.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.integrity import nonfinite_count, require_finite
from lungddpm.io.volume import Volume, index_to_physical, mask_image, require_same_grid
from lungddpm.layout.morphology import bounding_box, distance_mm

BACKGROUND = 0
LUNG = 1
NODULE = 2
LABELS = (BACKGROUND, LUNG, NODULE)
# A CT in HU has air near -1000 and tissue near 0; an image without both is not a CT in HU.
CT_MIN_BELOW_HU = -500.0
CT_MAX_ABOVE_HU = 0.0
# A nodule must lie in the lung or within this distance of it (hand-drawn and thresholded labels leave
# fragments a voxel or two outside the lung label; a nodule placed in the heart is centimetres away).
NODULE_LUNG_TOLERANCE_MM = 5.0
# A label image with more foreign values than this, or negative ones, is an intensity image (a CT) given as a layout.
MAX_FOREIGN_LABELS = 10


def synthesis_region(layout: Volume) -> np.ndarray:
    """The voxels synthesis changes: the lung and every nodule voxel, also where a nodule reaches beyond the lung."""
    return np.isin(layout.array, (LUNG, NODULE))


def compose_layout(lung: Volume, nodules: Volume | None) -> Volume:
    """Make a layout from a binary lung mask and an optional binary nodule mask on the same grid (nodule wins)."""
    layout = np.where(lung.array != 0, LUNG, BACKGROUND).astype(np.uint8)
    if nodules is not None:
        require_same_grid(lung, nodules, names=("lung mask", "nodule mask"))
        layout[nodules.array != 0] = NODULE
    return lung.with_array(layout)


# ----------------------------------------------------------------------------------------------------------
# Checks


def require_ct_like(ct: Volume, name: str) -> None:
    """Raise InputError when an image has non-finite values or an intensity range unlike a CT in HU."""
    require_finite(name, nonfinite_count(ct.array))
    low, high = float(ct.array.min()), float(ct.array.max())
    if low >= CT_MIN_BELOW_HU or high < CT_MAX_ABOVE_HU:
        raise InputError(f"{name} does not look like a CT in HU: intensities range {low:g} .. {high:g}, but a chest "
                         f"CT has air near -1000 HU and tissue near 0 HU; give the CT volume rescaled to HU")


def validate_layout(ct: Volume, layout: Volume, *, ct_name: str = "reference", layout_name: str = "layout") -> None:
    """Raise InputError unless the layout fits the CT: same grid, labels 0/1/2, lungs, nodules in or at the lung."""
    require_same_grid(ct, layout, names=(ct_name, layout_name))
    require_ct_like(ct, ct_name)
    validate_labels(layout, layout_name)


def validate_labels(layout: Volume, layout_name: str = "layout") -> np.ndarray:
    """A layout's label values, or InputError unless 0/1/2 only (not e.g. a CT), some lung, nodules in or at the lung."""
    labels = np.unique(layout.array)
    unknown = [value for value in labels.tolist() if value not in LABELS]
    if unknown:
        shown = f"{unknown[:5]}"[:-1] + (", ...]" if len(unknown) > 5 else "]")
        fix = ("it looks like an image, not a layout: give a label image (`lungddpm lung-mask CT` makes one)"
               if len(unknown) > MAX_FOREIGN_LABELS or min(unknown) < 0 else "relabel it")
        raise InputError(f"{layout_name} holds labels {shown} outside {{0 background, 1 lung, 2 nodule}}; {fix}")
    if LUNG not in labels:
        raise InputError(f"{layout_name} has no lung voxels (label {LUNG}); add a lung mask (e.g. lung_mask)")
    if NODULE in labels:
        _require_nodules_at_lung(layout, layout_name)
    return labels


def touches_lung(layout: Volume, nodule: np.ndarray) -> bool:
    """Whether a nodule mask (on the layout's grid) lies in or at the lung (label 1), by validate_layout's rule."""
    if not nodule.any():
        return False
    reach, spacing = _lung_reach_mm(layout), layout.spacing[::-1]
    box = bounding_box(nodule, [int(np.ceil(reach / s)) + 1 for s in spacing])
    lung = layout.array[box] == LUNG
    return bool(lung.any() and (nodule[box] & (distance_mm(lung, spacing) <= reach)).any())


def _lung_reach_mm(layout: Volume) -> float:
    """How far from the lung a nodule voxel still counts as at the lung: the tolerance, or one voxel diagonal.

    On grids coarser than NODULE_LUNG_TOLERANCE_MM, a nodule voxel that touches a lung voxel (up to the voxel
    diagonal) counts as at the lung: distances are measured between voxel centres.
    """
    return max(NODULE_LUNG_TOLERANCE_MM, float(np.linalg.norm(layout.spacing)) + 1e-6)


def _require_nodules_at_lung(layout: Volume, layout_name: str) -> None:
    """Raise InputError when a nodule (26-connected) has no voxel within _lung_reach_mm of the lung."""
    near_lung = distance_mm(layout.array == LUNG, layout.spacing[::-1]) <= _lung_reach_mm(layout)
    nodule_image = mask_image(layout.array == NODULE, layout)
    nodules = sitk.GetArrayFromImage(sitk.ConnectedComponent(nodule_image, True))
    touching = np.unique(nodules[near_lung & (nodules > 0)])
    outside = np.setdiff1d(np.arange(1, nodules.max() + 1), touching)
    if outside.size:
        k, j, i = (np.mean(axis) for axis in np.nonzero(nodules == outside[0]))
        centre = index_to_physical(layout, (i, j, k))
        raise InputError(f"{layout_name}: {outside.size} nodule(s) lie entirely outside the lung (farther than "
                         f"{NODULE_LUNG_TOLERANCE_MM:g} mm from it), e.g. the one centred at LPS "
                         f"{np.round(centre, 1).tolist()} mm; move them into the lung or relabel them")
