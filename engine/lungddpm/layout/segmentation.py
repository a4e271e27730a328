"""Layouts from segmentations a user already has: a label map, or a folder of per-structure masks.

TotalSegmentator's outputs are known by default. A label map (``--ml``, task ``total``, v2) numbers the lung
lobes 10 to 14 and the trachea 16; a folder holds one mask per structure, named after it
(``lung_upper_lobe_left.nii.gz``, ...). The lobes (or whole lungs) become lung (label 1), the trachea and
bronchi are taken out of it, nodules become label 2. Any other tool's labels (nnU-Net, ...) are chosen by
number (label map) or by file name (folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungddpm.errors import InputError
from lungddpm.io.volume import READABLE_SUFFIXES, Volume, read_volume, require_same_grid
from lungddpm.layout.labels import compose_layout

# TotalSegmentator v2, task "total": totalsegmentator/map_to_binary.py, class_map["total"].
TOTALSEGMENTATOR_LABELS = {
    "lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13, "lung_lower_lobe_right": 14, "trachea": 16,
}
LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
         "lung_lower_lobe_right")
# Per-structure masks taken as lung by default: the lobes (task total), whole lungs (total_mr; lung_nodules: "lung").
DEFAULT_LUNG = (*LOBES, "lung_left", "lung_right", "lung")
# Taken out of the lung: the trachea (task total) and the airway tree of task lung_vessels, which reaches into the
# lungs beyond the main bronchi; airways inside the lungs are lung in a layout, so only the masks named here go.
DEFAULT_EXCLUDED = ("trachea", "lung_trachea_bronchia")
# Nodules (label 2) by default: TotalSegmentator's task lung_nodules.
DEFAULT_NODULES = ("lung_nodules",)

Selection = Sequence[str | int]


def layout_from_segmentation(source: str | Path, *, lung: Selection | None = None, nodules: Selection | None = None,
                             exclude: Selection | None = None) -> Volume:
    """A 0/1/2 layout from a label map (labels by number or TotalSegmentator name) or a folder of masks (by name).

    lung, nodules, exclude: what becomes lung, what becomes nodule, what is taken out of the lung; None takes
    TotalSegmentator's defaults. Nodule voxels win over lung; excluded voxels are never lung.
    """
    source = Path(source)
    masks = _folder_masks if source.is_dir() else _label_map_masks
    lungs, nodule_voxels, excluded = masks(source, lung, nodules, exclude)
    lungs = lungs.with_array(lungs.array & ~excluded.array)
    return compose_layout(lungs, nodule_voxels if nodule_voxels.array.any() else None)


def _label_map_masks(path: Path, lung: Selection | None, nodules: Selection | None,
                     exclude: Selection | None) -> tuple[Volume, Volume, Volume]:
    """Lung, nodule and excluded masks of a label map; labels given by number or TotalSegmentator name."""
    labels = read_volume(path)
    present = set(np.unique(labels.array).tolist())
    chosen = [_numbers(path, selection, default) for selection, default in
              ((lung, LOBES), (nodules, ()), (exclude, ("trachea",)))]
    if not present & set(chosen[0]):
        raise InputError(f"{path}: holds labels {sorted(present - {0})} but none of the lung labels {chosen[0]}; "
                         f"give the lung's label numbers with --lung-labels")
    return tuple(labels.with_array(np.isin(labels.array, numbers)) for numbers in chosen)


def _numbers(path: Path, selection: Selection | None, default: Sequence[str]) -> list[int]:
    """Label numbers of a selection: numbers as they are, TotalSegmentator names through their v2 numbers."""
    numbers = []
    for item in default if selection is None else selection:
        if isinstance(item, int) or str(item).isdigit():
            numbers.append(int(item))
        elif item in TOTALSEGMENTATOR_LABELS:
            numbers.append(TOTALSEGMENTATOR_LABELS[item])
        else:
            raise InputError(f"{path}: label {item!r} is neither a number nor a TotalSegmentator name "
                             f"({', '.join(TOTALSEGMENTATOR_LABELS)}); give the label numbers of the label map")
    return numbers


def _folder_masks(folder: Path, lung: Selection | None, nodules: Selection | None,
                  exclude: Selection | None) -> tuple[Volume, Volume, Volume]:
    """Lung, nodule and excluded masks of a folder of per-structure masks (nonzero = inside), chosen by file name."""
    files = {_structure_name(path): path for path in sorted(folder.iterdir()) if _structure_name(path)}
    chosen = [_names(folder, selection, default) for selection, default in
              ((lung, DEFAULT_LUNG), (nodules, DEFAULT_NODULES), (exclude, DEFAULT_EXCLUDED))]
    if not any(name in files for name in chosen[0]):
        raise InputError(f"{folder}: holds no lung mask named {', '.join(chosen[0])} (found: "
                         f"{', '.join(sorted(files)) or 'no image files'}); name the lung files with --lung-labels")
    reference = read_volume(files[next(name for name in chosen[0] if name in files)])
    return tuple(_union(reference, [files[name] for name in names if name in files]) for names in chosen)


def _names(folder: Path, selection: Selection | None, default: Sequence[str]) -> list[str]:
    """Structure names of a selection for a folder; numbers have no meaning there."""
    names = list(default if selection is None else selection)
    numbers = [item for item in names if isinstance(item, int) or str(item).isdigit()]
    if numbers:
        raise InputError(f"{folder}: is a folder of per-structure masks, chosen by file name, not by label number "
                         f"{numbers}; give the structure names (e.g. lung_upper_lobe_left)")
    return [str(name) for name in names]


def _structure_name(path: Path) -> str:
    """The structure a mask file is named after (its name without an image extension), or '' for other files."""
    name = path.name
    suffix = next((s for s in sorted(READABLE_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), None)
    return name[:-len(suffix)] if suffix and path.is_file() else ""


def _union(reference: Volume, paths: Sequence[Path]) -> Volume:
    """The union of masks (nonzero = inside) on the reference's grid; every mask must share that grid."""
    union = np.zeros(reference.array.shape, bool)
    for path in paths:
        mask = read_volume(path)
        require_same_grid(reference, mask, names=("the first lung mask", str(path)))
        union |= mask.array != 0
    return reference.with_array(union)
