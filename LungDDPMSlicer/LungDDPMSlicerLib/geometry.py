"""Image geometry between Slicer and files: Slicer's IJK-to-RAS matrix <-> ITK/NRRD origin, spacing, direction (LPS).

Slicer places voxels with one 4x4 IJK-to-RAS matrix; ITK, SimpleITK and NRRD files (and the engine) use LPS
origin + spacing + direction. RAS and LPS differ by the sign of the first two axes. Numpy arrays of both
sides are indexed (k, j, i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: also LPS from RAS
ORTHOGONALITY_TOLERANCE = 1e-6


class GeometryError(ValueError):
    """A geometry that files cannot represent (e.g. a sheared IJK-to-RAS matrix)."""


@dataclass(frozen=True)
class LpsGeometry:
    """ITK-style geometry: origin (mm), spacing (mm, i/j/k order) and a row-major 3x3 direction, all LPS."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]


def lps_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> LpsGeometry:
    """The LPS origin, spacing and direction of a 4x4 IJK-to-RAS matrix; GeometryError if it is sheared."""
    ijk_to_lps = RAS_FROM_LPS @ np.asarray(ijk_to_ras, dtype=float)
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(f"IJK-to-RAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    direction = axes / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHOGONALITY_TOLERANCE):
        raise GeometryError("the volume's IJK-to-RAS axes are not orthogonal (sheared grid); "
                            "resample it onto an orthogonal grid (Resample Scalar Volume) first")
    return LpsGeometry(tuple(ijk_to_lps[:3, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist()))


def ijk_to_ras_from_lps_geometry(geometry: LpsGeometry) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of an LPS origin, spacing and direction."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(geometry.direction, dtype=float).reshape(3, 3) @ np.diag(geometry.spacing)
    ijk_to_lps[:3, 3] = geometry.origin
    return RAS_FROM_LPS @ ijk_to_lps


def ras_to_lps(point: np.ndarray) -> np.ndarray:
    """An RAS point (or points, shape (..., 3)) in LPS; the same flip maps LPS back to RAS."""
    return np.asarray(point, dtype=float) * np.array([-1.0, -1.0, 1.0])


def same_matrix(a: np.ndarray, b: np.ndarray, spacing_fraction: float = 1e-4) -> bool:
    """Whether two IJK-to-RAS matrices place every voxel within spacing_fraction of a voxel of each other."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = float(np.linalg.norm(a[:3, :3], axis=0).min())
    return bool(np.all(np.abs(a - b) <= spacing_fraction * scale))
