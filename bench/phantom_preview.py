"""Write axial and coronal slices of a procedural chest phantom as PNGs (lung and soft-tissue windows) to check it.

Usage: python bench/phantom_preview.py OUTPUT_FOLDER [--size I J K] [--spacing SI SJ SK] [--seed N] [--nodules N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.demo.phantom import NODULE_LABEL, make_phantom, phantom_grid

LUNG_WINDOW_HU = (-1350.0, 150.0)  # level -600, width 1500
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)  # level 40, width 400
NODULE_TINT_RGB = (255, 80, 80)
DISPLAY_PIXEL_MM = 0.7  # PNG pixel size: fine enough to see small vessels


def window_to_rgb(slice_hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW_HU) -> np.ndarray:
    """Map a 2-D HU slice to grey uint8 RGB through a window (low, high)."""
    low, high = window
    grey = np.clip((slice_hu.astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0
    return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)


def outline_nodules(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tint the border voxels of the nodule label so nodules are easy to find."""
    nodule = labels == NODULE_LABEL
    interior = nodule.copy()
    interior[1:-1, 1:-1] = (nodule[1:-1, 1:-1] & nodule[:-2, 1:-1] & nodule[2:, 1:-1]
                            & nodule[1:-1, :-2] & nodule[1:-1, 2:])
    out = rgb.copy()
    out[nodule & ~interior] = NODULE_TINT_RGB
    return out


def lung_and_soft_tissue(slice_hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The slice in the lung window (nodules outlined) beside the same slice in the soft-tissue window."""
    lung = outline_nodules(window_to_rgb(slice_hu), labels)
    return np.concatenate([lung, window_to_rgb(slice_hu, SOFT_TISSUE_WINDOW_HU)], axis=1)


def write_png(rgb: np.ndarray, spacing_xy: tuple[float, float], path: Path) -> None:
    """Write an RGB uint8 array (rows, columns, 3) as PNG with square DISPLAY_PIXEL_MM pixels."""
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing(spacing_xy)
    rows, columns = rgb.shape[:2]
    pixel = DISPLAY_PIXEL_MM
    size = [int(round(columns * spacing_xy[0] / pixel)), int(round(rows * spacing_xy[1] / pixel))]
    square = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (pixel, pixel),
                           image.GetDirection(), 0, image.GetPixelID())
    sitk.WriteImage(square, str(path))


def main() -> None:
    """Make a phantom; write phantom_axial_<k>.png (three levels, the largest nodule) and phantom_coronal.png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 128))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.4, 1.4, 2.5))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodules", type=int, default=3)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    phantom = make_phantom(phantom_grid(tuple(args.size), tuple(args.spacing)), seed=args.seed, nodules=args.nodules)
    print(f"phantom {args.size} in {time.perf_counter() - start:.2f} s; nodules: {phantom.nodules}")
    ct, labels = phantom.ct.array, phantom.layout.array
    si, sj, sk = phantom.ct.spacing
    slices = [int(fraction * ct.shape[0]) for fraction in (0.35, 0.55, 0.75)]
    if (labels == NODULE_LABEL).any():
        slices.append(int(np.argmax((labels == NODULE_LABEL).sum(axis=(1, 2)))))  # the most nodule voxels
    for k in slices:
        write_png(lung_and_soft_tissue(ct[k], labels[k]), (si, sj), args.folder / f"phantom_axial_{k}.png")
    j = int(0.45 * ct.shape[1])
    coronal = lung_and_soft_tissue(ct[::-1, j, :], labels[::-1, j, :])  # superior at the top
    write_png(coronal, (si, sk), args.folder / "phantom_coronal.png")
    print(f"wrote PNGs to {args.folder}")


if __name__ == "__main__":
    main()
