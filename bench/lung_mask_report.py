"""Compare lungddpm's automatic lung mask with the crude layout of the shared real CT, and draw both.

Usage: python bench/lung_mask_report.py OUTPUT_FOLDER [DATA_FOLDER]

Writes OUTPUT_FOLDER/lung-mask-A0001.png (left: an axial slice through the trachea, right: a coronal slice
through it; green outline: our lung mask, red outline: the crude layout's lung label) and prints the lung
volume, the runtime, the trachea voxels each mask contains and their Dice overlap outside the trachea.
The CT is from TCIA Lung-PET-CT-Dx (CC BY 4.0, see shared/data/README.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.layout.labels import LUNG
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.io.volume import Volume, read_volume

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung-pet-ct-dx-A0001"
PNG_NAME = "lung-mask-A0001.png"
OURS_RGB = (0, 255, 0)
CRUDE_RGB = (255, 40, 40)
# Reference trachea (independent of lung_mask): in the upper half of the scan, a round air region inside
# the body of 1 to 5 cm^2 whose centre lies within 30 mm of the body's mid-line.
TRACHEA_AREA_MM2 = (100.0, 500.0)
TRACHEA_MIDLINE_MM = 30.0
TRACHEA_MIN_ROUNDNESS = 0.8


def trachea_reference(ct: Volume) -> np.ndarray:
    """Reference trachea voxels of an axial LPS CT: round, mid-line air regions of the upper slices."""
    trachea = np.zeros(ct.array.shape, bool)
    pixel_spacing = ct.spacing[:2]
    for k in range(ct.array.shape[0] // 2, ct.array.shape[0]):
        body = _largest_region(_slice_image(ct.array[k] > -400, pixel_spacing))
        midline_mm = np.nonzero(body)[1].mean() * pixel_spacing[0]
        trachea[k] = _round_midline_air(_slice_image(ct.array[k] < -400, pixel_spacing), midline_mm)
    return trachea


def _slice_image(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> sitk.Image:
    """A 2-D uint8 image of a slice mask with its pixel spacing (mm)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(pixel_spacing)
    return image


def _largest_region(mask: sitk.Image) -> np.ndarray:
    """The largest connected region of a 2-D mask."""
    return sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(mask))) == 1


def _round_midline_air(air: sitk.Image, midline_mm: float) -> np.ndarray:
    """The air regions of a slice that have a trachea's area and roundness and lie near the mid-line."""
    labels = sitk.ConnectedComponent(air)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    chosen = [label for label in stats.GetLabels()
              if TRACHEA_AREA_MM2[0] <= stats.GetPhysicalSize(label) <= TRACHEA_AREA_MM2[1]
              and stats.GetRoundness(label) >= TRACHEA_MIN_ROUNDNESS
              and abs(stats.GetCentroid(label)[0] - midline_mm) <= TRACHEA_MIDLINE_MM]
    return np.isin(sitk.GetArrayFromImage(labels), chosen)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return float(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def measure(ct: Volume, crude: Volume) -> tuple[np.ndarray, dict[str, float]]:
    """Run lung_mask on the CT and compare it with the crude layout's lung label; returns the mask and numbers."""
    start = time.perf_counter()
    ours = lung_mask(ct).array > 0
    runtime = time.perf_counter() - start
    theirs = crude.array == LUNG
    trachea = trachea_reference(ct)
    numbers = {
        "lung_volume_l": float(np.count_nonzero(ours) * np.prod(ct.spacing) / 1e6),
        "runtime_s": runtime,
        "trachea_voxels_reference": int(np.count_nonzero(trachea)),
        "trachea_voxels_ours": int(np.count_nonzero(ours & trachea)),
        "trachea_voxels_crude": int(np.count_nonzero(theirs & trachea)),
        "dice_outside_trachea": dice(ours & ~trachea, theirs & ~trachea),
    }
    return ours, numbers


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2-D mask."""
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def _panel(hu: np.ndarray, ours: np.ndarray, crude: np.ndarray, row_repeat: int) -> np.ndarray:
    """An RGB panel of a CT slice in a lung window with both outlines; rows repeated for square pixels."""
    grey = (np.clip((hu.astype(float) + 1000.0) / 1400.0, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[_outline(crude)] = CRUDE_RGB
    rgb[_outline(ours)] = OURS_RGB
    return np.repeat(rgb, row_repeat, axis=0)


def render(ct: Volume, ours: np.ndarray, crude: np.ndarray, trachea: np.ndarray, path: Path) -> Path:
    """Write a PNG: an axial slice showing lungs and a trachea that the crude layout takes in, and a coronal one."""
    slices = np.flatnonzero((crude & trachea).any(axis=(1, 2)) & ours.any(axis=(1, 2)))
    k = int(slices[len(slices) // 2])
    j = int(round(np.nonzero(trachea[k])[0].mean()))
    axial = _panel(ct.array[k], ours[k], crude[k], 1)
    repeat = max(1, round(ct.spacing[2] / ct.spacing[1]))
    coronal = _panel(ct.array[::-1, j], ours[::-1, j], crude[::-1, j], repeat)
    height = max(axial.shape[0], coronal.shape[0])
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in (axial, coronal)]
    sitk.WriteImage(sitk.GetImageFromArray(np.concatenate(panels, axis=1), isVector=True), str(path))
    return path


def main(argv: list[str]) -> dict[str, float]:
    """Measure, print and draw; argv = [output folder, optional data folder]."""
    if not argv:
        raise SystemExit(__doc__)
    output = Path(argv[0])
    data = Path(argv[1]) if len(argv) > 1 else DEFAULT_DATA
    ct, crude = read_volume(data / "ct.nii.gz"), read_volume(data / "layout-crude.nii.gz")
    ours, numbers = measure(ct, crude)
    output.mkdir(parents=True, exist_ok=True)
    png = render(ct, ours, crude.array == LUNG, trachea_reference(ct), output / PNG_NAME)
    for name, value in numbers.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    print(f"picture: {png} (green: lungddpm lung_mask, red: crude layout lung label)")
    return numbers


if __name__ == "__main__":
    main(sys.argv[1:])
