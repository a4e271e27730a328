"""Resampling between grids: the reference onto a model grid, and the way back, blended in inside the lungs only."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lungddpm.io.volume import Volume, to_pixel_type
from lungddpm.layout.labels import synthesis_region

PAD_HU = -1000.0  # value (air) for model-grid voxels outside the reference's field of view


def resample_onto(image: sitk.Image, grid: sitk.Image, default: float = 0.0, interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """image resampled onto grid (identity transform), as a float32 array (k, j, i)."""
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def synthesis_weight(layout: Volume, margin_mm: float) -> np.ndarray:
    """Blend weight on the layout grid: 0 outside labels.synthesis_region, rising to 1 over margin_mm inside it."""
    region = synthesis_region(layout).astype(np.uint8)
    if margin_mm <= 0:
        return region.astype(np.float32)
    img = sitk.GetImageFromArray(region)
    img.CopyInformation(layout.to_sitk())
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    return np.where(region > 0, np.clip((dist + 0.5 * min(layout.spacing)) / margin_mm, 0, 1), 0).astype(np.float32)


def to_reference_grid(hu_model: np.ndarray, grid: sitk.Image, reference: Volume, layout: Volume, margin_mm: float) -> Volume:
    """Resample model-grid HU onto the reference grid and blend it in inside the lung region only.

    Outside the lung region (layout 0) the result is the reference voxel for voxel; the result has
    the reference's size, spacing, origin, direction and pixel type.
    """
    img = sitk.GetImageFromArray(hu_model.astype(np.float32))
    img.CopyInformation(grid)
    syn = resample_onto(img, reference.to_sitk_geometry(), default=PAD_HU)
    w = synthesis_weight(layout, margin_mm)
    ref = reference.array
    out = np.where(w > 0, ref.astype(np.float64) + w * (syn - ref), ref)
    return reference.with_array(to_pixel_type(out, ref.dtype))
