"""Layouts from existing segmentations (lungddpm.layout.segmentation): TotalSegmentator's label map and folder
of per-structure masks, another tool's labels, and the mistakes a user can make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, index_to_physical, write_volume
from lungddpm.layout.labels import BACKGROUND, LUNG, NODULE, validate_labels
from lungddpm.layout.segmentation import layout_from_segmentation

# TotalSegmentator v2 "total" label numbers, written out here independently of the module's table.
LOBE_NUMBERS = {"lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12,
                "lung_middle_lobe_right": 13, "lung_lower_lobe_right": 14}
TRACHEA, HEART = 16, 51


@pytest.fixture(scope="module")
def structures() -> dict[str, Volume]:
    """Masks of a phantom chest: five lobes (the lungs cut by height), the trachea, the heart and a nodule."""
    phantom = make_phantom(phantom_grid((96, 80, 40), (3.5, 3.5, 6.0)), seed=4)
    k, j, i = np.indices(phantom.layout.array.shape)
    x, y, z = np.moveaxis(index_to_physical(phantom.layout, np.stack([i, j, k], axis=-1)), -1, 0)
    lung = phantom.layout.array > 0
    right, left = lung & (x < 0), lung & (x > 0)
    masks = {"lung_upper_lobe_left": left & (z > 0), "lung_lower_lobe_left": left & (z <= 0),
             "lung_upper_lobe_right": right & (z > 30), "lung_middle_lobe_right": right & (z <= 30) & (z > -10),
             "lung_lower_lobe_right": right & (z <= -10),
             "trachea": (np.hypot(x, y + 5.0) < 7.0) & (z > 40) & ~lung, "heart": (np.hypot(x - 10, y) < 40) & ~lung}
    nodule = np.linalg.norm(np.stack([x + 70, y - 10, z - 20]), axis=0) < 8.0
    masks["lung_nodules"] = nodule & lung
    return {name: phantom.layout.with_array(mask.astype(np.uint8)) for name, mask in masks.items()}


def label_map(structures: dict[str, Volume], numbers: dict[str, int]) -> Volume:
    """One label image from masks (later names win where masks overlap)."""
    first = next(iter(structures.values()))
    labels = np.zeros(first.array.shape, np.uint8)
    for name, number in numbers.items():
        labels[structures[name].array > 0] = number
    return first.with_array(labels)


def lungs_of(structures: dict[str, Volume]) -> np.ndarray:
    """The union of the five lobes."""
    return np.any([structures[name].array > 0 for name in LOBE_NUMBERS], axis=0)


def test_totalsegmentator_label_map_by_default(structures: dict[str, Volume], tmp_path: Path) -> None:
    numbers = {**LOBE_NUMBERS, "trachea": TRACHEA, "heart": HEART}
    path = write_volume(label_map(structures, numbers), tmp_path / "ts.nii.gz")
    layout = layout_from_segmentation(path)
    assert np.array_equal(layout.array, np.where(lungs_of(structures), LUNG, BACKGROUND))
    assert layout.array.dtype == np.uint8
    validate_labels(layout)
    two_lobes = layout_from_segmentation(path, lung=["lung_upper_lobe_left", 11])  # a name, a number
    left = (structures["lung_upper_lobe_left"].array > 0) | (structures["lung_lower_lobe_left"].array > 0)
    assert np.array_equal(two_lobes.array > 0, left)


def test_totalsegmentator_folder_by_default(structures: dict[str, Volume], tmp_path: Path) -> None:
    """Per-structure files: lobes are lung, nodules are label 2, the airway tree comes out, other organs are ignored."""
    folder = tmp_path / "segmentations"
    for name, mask in structures.items():
        write_volume(mask, folder / f"{name}.nii.gz")
    bronchi = structures["lung_lower_lobe_right"].array.copy()
    bronchi[:, :, : bronchi.shape[2] // 4] = 0  # a made-up airway mask overlapping the lower right lobe
    write_volume(structures["trachea"].with_array(bronchi), folder / "lung_trachea_bronchia.nii.gz")
    (folder / "statistics.json").write_text("{}")
    layout = layout_from_segmentation(folder)
    nodule = structures["lung_nodules"].array > 0
    assert np.array_equal(layout.array == NODULE, nodule)
    assert np.array_equal(layout.array == LUNG, lungs_of(structures) & ~(bronchi > 0) & ~nodule)
    validate_labels(layout)


def test_other_tools_labels_by_number(structures: dict[str, Volume], tmp_path: Path) -> None:
    """An nnU-Net label map with 1 lung, 2 nodule."""
    labels = np.where(lungs_of(structures), 1, 0).astype(np.uint8)
    labels[structures["lung_nodules"].array > 0] = 2
    path = write_volume(structures["heart"].with_array(labels), tmp_path / "nnunet.nrrd")
    layout = layout_from_segmentation(path, lung=["1"], nodules=["2"])
    assert np.array_equal(layout.array, labels)


def test_mistakes_are_named(structures: dict[str, Volume], tmp_path: Path) -> None:
    no_lung = write_volume(label_map(structures, {"heart": HEART}), tmp_path / "heart.nii.gz")
    with pytest.raises(InputError, match=r"none of the lung labels \[10, 11, 12, 13, 14\].*--lung-labels"):
        layout_from_segmentation(no_lung)
    with pytest.raises(InputError, match="neither a number nor a TotalSegmentator name"):
        layout_from_segmentation(no_lung, lung=["lungs"])
    folder = tmp_path / "masks"
    write_volume(structures["heart"], folder / "heart.nii.gz")
    with pytest.raises(InputError, match="holds no lung mask named.*found: heart"):
        layout_from_segmentation(folder)
    with pytest.raises(InputError, match="by file name, not by label number"):
        layout_from_segmentation(folder, lung=[10])
    lobe = structures["lung_upper_lobe_left"]
    write_volume(lobe, folder / "lung_upper_lobe_left.nii.gz")
    shifted = Volume(lobe.array, tuple(np.add(lobe.origin, (4.0, 0.0, 0.0))), lobe.spacing, lobe.direction)
    write_volume(shifted, folder / "lung_lower_lobe_left.nii.gz")
    with pytest.raises(InputError, match="lung_lower_lobe_left.nii.gz"):
        layout_from_segmentation(folder)
