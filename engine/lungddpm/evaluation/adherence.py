"""Does a synthetic nodule look as it was asked to? Image-based measurements per nodule and their agreement with requests.

Per nodule (26-connected component of the layout's label 2, numbered as ``layout.sidecar`` numbers them), on
the synthetic CT, in HU and mm on any grid and orientation:

- ``mean_hu``, ``solid_fraction`` (share of the layout nodule's voxels above SOLID_HU) and
  ``calcified_fraction`` (above CALCIFIED_HU): texture and calcification;
- ``edge_sharpness_hu_per_mm``: mean |∇HU| over the voxels on both sides of the layout nodule's border
  (``metrics.mask_band``): margin (a step between a nodule and the lung, or a ramp of width e, gives about
  ΔHU / e);
- the **dense region**: the connected region above DENSE_HU that overlaps the layout nodule most, within
  NEIGHBOURHOOD_RADII equivalent radii of it (spicules may reach beyond the layout), leaving out, outside the
  layout nodule, what is above DENSE_HU in the reference too (vessels, airway walls: anatomy that was there
  before; without a reference they count): its ``compactness``
  (SimpleITK's roundness, the area of the sphere of its volume over its estimated surface area: about 1 for
  a sphere, up to about 10 % above 1 on coarse anisotropic voxels, so irregularity may be slightly negative) and ``irregularity`` = 1 − compactness (spiculation,
  lobulation), its ``elongation`` (principal-axis ratio, the square root of the largest over the smallest
  eigenvalue of the covariance of its voxel positions in mm: a / c for an ellipsoid of semi-axes a ≥ b ≥ c;
  sphericity) and ``diameter_mm`` (equivalent sphere); NaN when it has fewer than MIN_DENSE_VOXELS voxels
  (a ground-glass nodule has none).

Agreement per attribute (``agreement``): ordinal attributes against their measure by Spearman's ρ (with the
sign a faithful model gives, EXPECTED_SIGN), with the measure's mean per requested value (the diameter: the
mean absolute error in mm); calcification as a
confusion matrix of requested (codes 1–5: calcified, 6: absent) against measured (calcified_fraction at least
CALCIFIED_SHARE). internal structure, subtlety and malignancy have no image measure here and are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from lungddpm.evaluation.metrics import gradient_magnitude, mask_band, near_mask
from lungddpm.io.volume import Volume, index_to_physical
from lungddpm.layout.sidecar import component_centres_mm, equivalent_diameter_mm, nodule_components

SOLID_HU = -300.0  # soft tissue begins: ground glass (about −750 to −300 HU) lies below, solid nodules above
DENSE_HU = -400.0  # the visible nodule for shape measures: above ground-glass haze and aerated lung
CALCIFIED_HU = 200.0  # calcium: well above soft tissue (nodules 0–100 HU)
CALCIFIED_SHARE = 0.02  # a nodule with at least this share of voxels above CALCIFIED_HU is measured calcified
NEIGHBOURHOOD_RADII = 1.0  # the dense region may reach this many equivalent radii beyond the layout nodule
MIN_DENSE_VOXELS = 8  # smaller dense regions have no meaningful shape
ORDINAL_MEASURES = (("texture", "mean_hu"), ("texture", "solid_fraction"), ("margin", "edge_sharpness_hu_per_mm"),
                    ("spiculation", "irregularity"), ("lobulation", "irregularity"), ("sphericity", "elongation"),
                    ("diameter_mm", "diameter_mm"))
EXPECTED_SIGN = {"sphericity": -1}  # rounder (higher code) means less elongated; every other measure rises
CALCIFIED_CODES = (1, 2, 3, 4, 5)  # popcorn, laminated, solid, non-central, central; 6 is absent


def nodule_measurements(image: Volume, layout: Volume, reference: Volume | None = None) -> list[dict]:
    """Per layout nodule: its component, centre (LPS mm), layout diameter and the image measurements (module docstring).

    All three on one grid; ``reference``: the CT the image was made from, whose dense anatomy the dense region leaves out.
    """
    components, count = nodule_components(layout)
    centres = component_centres_mm(layout, components, count)
    rows = []
    for label, centre in zip(range(1, count + 1), centres):
        mask = components == label
        voxels = int(mask.sum())
        reach_mm = NEIGHBOURHOOD_RADII * equivalent_diameter_mm(voxels, layout.spacing) / 2
        box = _box(mask, layout.spacing, reach_mm + 2 * max(layout.spacing))
        crop = _cropped(image, box)
        inside = mask[box]
        anatomy = (reference.array[box] > DENSE_HU) & ~inside if reference is not None else np.zeros_like(inside)
        values = crop.array[inside].astype(np.float64)
        rows.append({"component": label, "center_lps_mm": list(centre),
                     "layout_diameter_mm": equivalent_diameter_mm(voxels, layout.spacing),
                     "mean_hu": float(values.mean()), "solid_fraction": float((values > SOLID_HU).mean()),
                     "calcified_fraction": float((values > CALCIFIED_HU).mean()),
                     "edge_sharpness_hu_per_mm": float(gradient_magnitude(crop)[mask_band(inside)].mean()),
                     **shape_measures(dense_region(crop, inside, reach_mm) & ~anatomy, crop.spacing)})
    return rows


def _box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> tuple[slice, slice, slice]:
    """The (k, j, i) slices of the mask's bounding box grown by margin_mm on every side, within the array."""
    kji = np.argwhere(mask)
    pad = np.ceil(margin_mm / np.asarray(spacing, dtype=float)[::-1]).astype(int)
    low, high = np.maximum(kji.min(axis=0) - pad, 0), np.minimum(kji.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _cropped(image: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The box of an image as a Volume of its own (origin moved to the box's first voxel)."""
    start = [s.start for s in box][::-1]
    return Volume(np.ascontiguousarray(image.array[box]), tuple(index_to_physical(image, start)), image.spacing,
                  image.direction)


def dense_region(image: Volume, nodule: np.ndarray, reach_mm: float) -> np.ndarray:
    """The connected region above DENSE_HU within reach_mm of the nodule mask that overlaps it most (maybe empty)."""
    candidates = (image.array > DENSE_HU) & near_mask(nodule, image, reach_mm)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(candidates.astype(np.uint8)), True))
    overlap = np.bincount(labels[nodule], minlength=int(labels.max()) + 1)
    overlap[0] = 0
    return labels == int(overlap.argmax()) if overlap.any() else np.zeros_like(nodule)


def shape_measures(region: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """compactness, irregularity, elongation and diameter_mm of a region (spacing i, j, k in mm); NaN when too small."""
    voxels = int(region.sum())
    if voxels < MIN_DENSE_VOXELS:
        return {"compactness": math.nan, "irregularity": math.nan, "elongation": math.nan, "diameter_mm": math.nan}
    image = sitk.GetImageFromArray(region.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOn()
    shape.Execute(image)
    compactness = float(shape.GetRoundness(1))
    positions = np.argwhere(region) * np.asarray(spacing, dtype=float)[::-1]  # mm; rotation leaves eigenvalues alone
    eigen = np.linalg.eigvalsh(np.cov(positions.T))
    return {"compactness": compactness, "irregularity": 1.0 - compactness,
            "elongation": float(np.sqrt(eigen[-1] / eigen[0])) if eigen[0] > 0 else math.inf,
            "diameter_mm": equivalent_diameter_mm(voxels, spacing)}


# ----------------------------------------------------------------------------------------------------------
# Agreement between requested attributes and measurements


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (as Spearman's ρ needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation ρ (the Pearson correlation of tie-averaged ranks); NaN when either is constant."""
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def agreement(nodules: Iterable[Mapping]) -> dict:
    """Per attribute: requested vs measured over nodules that carry a 'requested' record and the measure.

    Ordinal: {measure: {n, spearman_rho, expected_sign, mean_by_requested}}; calcification: a confusion matrix.
    """
    nodules = [n for n in nodules if n.get("requested")]
    result: dict = {}
    for attribute, measure in ORDINAL_MEASURES:
        pairs = [(n["requested"][attribute], n[measure]) for n in nodules
                 if n["requested"].get(attribute) is not None and math.isfinite(n[measure])]
        if not pairs:
            continue
        asked, measured = (np.array(v, dtype=np.float64) for v in zip(*pairs))
        scored = {"n": len(pairs), "spearman_rho": spearman(asked, measured) if len(pairs) >= 3 else math.nan,
                  "expected_sign": EXPECTED_SIGN.get(attribute, 1)}
        if attribute == "diameter_mm":  # a length, not a code: how far off, rather than a mean per value
            scored["mean_abs_error_mm"] = float(np.abs(measured - asked).mean())
        else:
            scored["mean_by_requested"] = {f"{v:g}": {"mean": float(measured[asked == v].mean()),
                                                      "n": int((asked == v).sum())} for v in np.unique(asked)}
        result.setdefault(attribute, {})[measure] = scored
    asked_calcium = [n for n in nodules if n["requested"].get("calcification") is not None]
    if asked_calcium:
        matrix = {f"requested {a}": {f"measured {m}": 0 for m in ("calcified", "not calcified")}
                  for a in ("calcified", "not calcified")}
        for n in asked_calcium:
            asked = "calcified" if n["requested"]["calcification"] in CALCIFIED_CODES else "not calcified"
            measured = "calcified" if n["calcified_fraction"] >= CALCIFIED_SHARE else "not calcified"
            matrix[f"requested {asked}"][f"measured {measured}"] += 1
        correct = sum(matrix[f"requested {c}"][f"measured {c}"] for c in ("calcified", "not calcified"))
        result["calcification"] = {"confusion": matrix, "n": len(asked_calcium), "accuracy": correct / len(asked_calcium)}
    return result
