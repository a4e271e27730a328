"""How far to trust a lung mask: each lung's volume, the left/right balance, and warnings with their reasons.

Works for any lung mask on a CT's grid (the automatic one, a user's, one made from a segmentation). The
lungs are told apart by the body's mid-line, so joined lungs are measured as well as separate ones. A
warning names what is implausible and why; it does not change the mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from lungddpm.io.volume import Volume, mask_image, require_same_grid
from lungddpm.layout.body import chest_air
from lungddpm.layout.morphology import bin_any, dilate1, erode1

# An adult's lungs hold 2 to 8 L at inspiration; less than this is a child, part of the chest, or a failed mask.
ADULT_MIN_LITRES = 1.0
# The right lung holds 50 to 60 % of both; a side under this share of the mask points to a missing lung.
MIN_SIDE_FRACTION = 0.25
# The chest wall keeps the lungs several millimetres from the air outside the body; a mask whose surface lies
# on that air over more than this fraction has taken outside air (or the body wall) for lung.
MAX_BODY_WALL_FRACTION = 0.05


@dataclass
class LungReport:
    """Volumes in litres, the left lung's share of both, the share of the surface on outside air, and warnings."""

    right_lung_l: float
    left_lung_l: float
    left_fraction: float
    body_wall_fraction: float
    warnings: list[str] = field(default_factory=list)

    @property
    def lung_volume_l(self) -> float:
        """Both lungs, in litres."""
        return self.right_lung_l + self.left_lung_l

    def to_dict(self) -> dict:
        """The numbers (rounded) and warnings, for JSON."""
        record = {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(self).items()}
        return {"lung_volume_l": round(self.lung_volume_l, 3), **record}


def lung_report(ct: Volume, mask: Volume, *, ct_name: str = "CT", mask_name: str = "lung mask") -> LungReport:
    """Measure a lung mask (nonzero = lung) on its CT: per-lung volumes, balance, contact with outside air, warnings."""
    require_same_grid(ct, mask, names=(ct_name, mask_name))
    chest = chest_air(ct)
    lung = sitk.GetArrayFromImage(sitk.DICOMOrient(mask_image(mask.array != 0, mask), "LPS")) > 0
    voxel_l = float(np.prod(mask.spacing)) / 1e6
    midline = _midline_column(chest.body, lung, chest.factors)
    left = float(np.count_nonzero(lung[:, :, midline:])) * voxel_l  # LPS: the array's last axis runs to the left
    right = float(np.count_nonzero(lung)) * voxel_l - left
    total = left + right
    coarse = bin_any(lung, chest.factors)
    surface = coarse & ~erode1(coarse)
    on_air = np.count_nonzero(surface & dilate1(chest.outside)) / max(np.count_nonzero(surface), 1)
    report = LungReport(right, left, left / total if total else 0.0, float(on_air))
    report.warnings = _warnings(report, lung)
    return report


def _midline_column(body: np.ndarray, lung: np.ndarray, factors_kji: tuple[int, int, int]) -> int:
    """The full-grid column (LPS array axis i) of the body's mid-line over the slices that hold lung."""
    slices = np.unique(np.minimum(np.flatnonzero(lung.any(axis=(1, 2))) // factors_kji[0], body.shape[0] - 1))
    columns = np.nonzero(body[slices])[2]
    centre = columns.mean() if columns.size else body.shape[2] / 2.0
    return int(round((centre + 0.5) * factors_kji[2]))


def _warnings(report: LungReport, lung: np.ndarray) -> list[str]:
    """The reasons to doubt a mask, one sentence each."""
    found = []
    total = report.lung_volume_l
    if total < ADULT_MIN_LITRES:
        cut = " (the lungs reach the scan's first or last slice: it may cover part of them)" \
            if lung[0].any() or lung[-1].any() else ""
        found.append(f"the lungs hold {total:.2f} L, under the {ADULT_MIN_LITRES:g} L expected of an adult's lungs: "
                     f"check the mask, unless this is a child or a partial scan{cut}")
    smaller, side = min((report.right_lung_l, "right"), (report.left_lung_l, "left"))
    if total > 0 and smaller < MIN_SIDE_FRACTION * total:
        found.append(f"the {side} lung holds {smaller:.2f} L, {100 * smaller / total:.0f} % of the mask (normally 40 "
                     f"to 60 %): one lung is missing or mostly not segmented")
    if report.body_wall_fraction > MAX_BODY_WALL_FRACTION:
        found.append(f"{100 * report.body_wall_fraction:.0f} % of the mask's surface lies on the air outside the body "
                     f"(a lung lies behind the chest wall): the mask has taken outside air or the body wall for lung")
    return found
