"""Image-quality measures of a synthetic CT against its reference and layout, in HU and millimetres."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.io.volume import Volume


def region_stats(image: Volume, layout: Volume) -> dict[str, float]:
    """Mean and standard deviation of HU inside the lung (label 1) and the nodules (label 2)."""
    stats = {}
    for name, label in (("lung", LUNG), ("nodule", NODULE)):
        values = image.array[layout.array == label].astype(np.float64)
        stats[f"{name}_mean_hu"] = float(values.mean()) if values.size else float("nan")
        stats[f"{name}_std_hu"] = float(values.std()) if values.size else float("nan")
    return stats


def boundary_band(layout: Volume) -> np.ndarray:
    """Voxels within one voxel of the lung region's border (inside or outside), as a boolean array."""
    return mask_band(layout.array > 0)


def mask_band(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel of a mask's border, inside or outside (the voxel pairs across it)."""
    region = sitk.GetImageFromArray(mask.astype(np.uint8))
    outer = sitk.GetArrayFromImage(sitk.BinaryDilate(region, [1, 1, 1])) > 0
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(region, [1, 1, 1])) > 0
    return outer & ~inner


def near_mask(mask: np.ndarray, grid: Volume, margin_mm: float) -> np.ndarray:
    """Voxels within margin_mm (physical, spacing-aware) of a mask on the grid."""
    if not mask.any():
        return mask.copy()
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(grid.to_sitk_geometry())
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(distance) <= margin_mm


def gradient_magnitude(image: Volume) -> np.ndarray:
    """|∇HU| in HU/mm (spacing-aware), as a (k, j, i) array."""
    img = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.GradientMagnitude(img, useImageSpacing=True))


def seam_score(image: Volume, reference: Volume, layout: Volume) -> float:
    """Mean |∇HU| across the lung border of the synthetic image divided by the reference's own (1 = no seam)."""
    band = boundary_band(layout)
    return float(gradient_magnitude(image)[band].mean() / gradient_magnitude(reference)[band].mean())
