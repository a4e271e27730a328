"""Volumes -> feature vectors of a 3-D backbone, for distribution metrics between sets of CTs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm.errors import ConfigError
from lungddpm.synthesis.profiles import NATIVE_HU_WINDOW, PAD_HU, released_grid
from lungddpm.io.volume import Volume

DEFAULT_FEATURE_SIZE = 64  # voxels per side of the cube a volume is resized to before the backbone
MIN_FEATURE_SIZE = 8  # the ResNet's stem and layer2 shrink the cube 8-fold: smaller cubes leave under one voxel


def check_feature_size(size: int) -> int:
    """The feature cube size itself, or ConfigError when it is below MIN_FEATURE_SIZE."""
    if size < MIN_FEATURE_SIZE:
        raise ConfigError(f"feature size {size} (--feature-size) is too small: give at least {MIN_FEATURE_SIZE} voxels "
                          f"per side (default {DEFAULT_FEATURE_SIZE})")
    return size


def backbone_input(volume: Volume, size: int = DEFAULT_FEATURE_SIZE, window: tuple[float, float] = NATIVE_HU_WINDOW) -> torch.Tensor:
    """(1, 1, size, size, size): the whole volume resized over its field of view, HU clipped to window, z-scored.

    Z-scoring per volume follows MedicalNet's pre-processing; the HU window keeps metal and air
    outliers from dominating the scaling.
    """
    grid = released_grid(volume, size)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, PAD_HU, sitk.sitkFloat32))
    array = np.clip(array, *window)
    array = (array - array.mean()) / max(float(array.std()), 1e-6)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


@torch.no_grad()
def extract_features(volumes: Iterable[Volume], backbone: torch.nn.Module, size: int = DEFAULT_FEATURE_SIZE,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """(N, F) float64 features, one volume at a time (memory stays that of one volume)."""
    backbone = backbone.to(device).eval()
    rows = [backbone(backbone_input(v, size).to(device)).double().cpu().numpy()[0] for v in volumes]
    return np.stack(rows) if rows else np.zeros((0, getattr(backbone, "features", 0)))
