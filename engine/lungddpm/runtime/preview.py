"""PNG previews of CT volumes in radiological display (patient left on the image's right, anterior up)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import OutputError
from lungddpm.io.atomic import atomic_output
from lungddpm.io.volume import Volume

LUNG_WINDOW = (-1350.0, 150.0)  # HU shown from black to white (level −600, width 1500)
MIN_PANEL_PIXELS = 384  # panels narrower than this are enlarged by an integer factor


def patient_aligned(volume: Volume, interpolator: int = sitk.sitkLinear, default: float = -1000.0) -> tuple[np.ndarray, np.ndarray]:
    """The volume resampled onto an LPS-identity grid covering it: array axes (S, P, L) and its spacing.

    In-plane spacing is the finest of the volume's, the S spacing its coarsest (a display grid).
    """
    img = volume.to_sitk()
    size = np.array(img.GetSize())
    corners = np.array([img.TransformIndexToPhysicalPoint([int(c) for c in (i, j, k)])
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    lo, hi = corners.min(0), corners.max(0)
    spacing = np.array([min(volume.spacing), min(volume.spacing), max(volume.spacing)])
    out_size = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 1)
    grid = sitk.Image([int(s) for s in out_size], sitk.sitkFloat32)
    grid.SetOrigin(lo.tolist())
    grid.SetSpacing(spacing.tolist())
    return sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), grid, sitk.Transform(), interpolator, default)), spacing


def _to_gray(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> uint8 grey levels for a display window."""
    lo, hi = window
    return (np.clip((hu - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _rgb(gray: np.ndarray, outline: np.ndarray | None = None) -> np.ndarray:
    """Grey image as RGB, with an optional red outline."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if outline is not None:
        rgb[outline] = (255, 40, 40)
    return rgb


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D mask that touch a pixel outside it."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _stretch(image: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Repeat rows so that a pixel covers the same millimetres in both directions."""
    factor = max(int(round(row_mm / col_mm)), 1)
    return np.repeat(image, factor, axis=0)


def slice_panels(volumes: list[Volume], labels: Volume | None, focus_label: int = 2, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """One RGB image: an axial row and a coronal row, one column per volume, through the focus label's centre."""
    arrays = [patient_aligned(v) for v in volumes]
    spacing = arrays[0][1]
    lab = patient_aligned(labels, sitk.sitkNearestNeighbor, 0)[0].round().astype(np.int16) if labels is not None else None
    k, j = _focus(lab, focus_label, arrays[0][0].shape)
    rows = []
    for cut in ("axial", "coronal"):
        panels = []
        for arr, _ in arrays:
            img = arr[k] if cut == "axial" else arr[::-1, j]
            outline = None
            if lab is not None:
                sl = lab[k] if cut == "axial" else lab[::-1, j]
                outline = _outline(sl == focus_label)
            rgb = _rgb(_to_gray(img, window), outline)
            panels.append(rgb if cut == "axial" else _stretch(rgb, spacing[2], spacing[0]))
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    image = np.concatenate(rows, axis=0)
    zoom = max(1, MIN_PANEL_PIXELS // arrays[0][0].shape[2])  # small grids are enlarged to be readable
    return image.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _focus(lab: np.ndarray | None, focus_label: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(k, j) through the centre of the largest focus-label component, else of all labels, else the middle."""
    if lab is not None and (lab == focus_label).any():
        components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray((lab == focus_label).astype(np.uint8))))
        k, j, _ = (int(np.mean(a)) for a in np.nonzero(sitk.GetArrayFromImage(components) == 1))
        return k, j
    if lab is not None and (lab > 0).any():
        k, j, _ = (int(np.mean(a)) for a in np.nonzero(lab > 0))
        return k, j
    return shape[0] // 2, shape[1] // 2


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 array as PNG, atomically."""
    with atomic_output(path) as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True), str(temporary))
        try:
            sitk.ReadImage(str(temporary))  # ITK's PNG writer reports success after a short write on a full disk
        except RuntimeError as error:
            raise OutputError(f"{path}: the written PNG came out incomplete; check the free space and the disk, "
                              "then write it again") from error
    return Path(path)
