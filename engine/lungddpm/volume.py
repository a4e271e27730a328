"""A CT or label image: a numpy array indexed (k, j, i) plus its physical geometry (LPS, like ITK)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass
class Volume:
    """Voxel array indexed (k, j, i) with origin (mm), spacing (mm, i/j/k order) and a 3x3 direction (row-major), all LPS."""

    array: np.ndarray
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        self.origin = tuple(float(v) for v in self.origin)
        self.spacing = tuple(float(v) for v in self.spacing)
        self.direction = tuple(float(v) for v in np.asarray(self.direction, dtype=float).reshape(9))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Copy a SimpleITK image into a Volume."""
        return cls(sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(), image.GetDirection())

    def to_sitk(self) -> sitk.Image:
        """Copy this Volume into a SimpleITK image with the same geometry."""
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume on the same grid holding another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.origin, self.spacing, self.direction)
