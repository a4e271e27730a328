"""Fidelity of synthetic CTs: paired metrics against each case's reference, distribution metrics between sets.

Paired metrics (synthetic vs the reference it was made from, on the reference grid):

- lung-masked MSE, the paper's formula: mean of (x_syn − x_ref)² over the lung region (layout ≥ 1),
  in the model's [−1, 1] space (HU clipped to the native window [−1000, 500] and scaled) and in HU²;
- seam score: mean |∇HU| across the lung border of the synthetic CT over the reference's own (1 = no seam);
- layout adherence: the fraction of nodule-layout voxels whose HU lies in the soft-tissue range;
- spurious blobs: connected soft-tissue components inside the lung region but away from the nodule
  layout (farther than a margin), at least a minimum volume, that the reference does not have there.

Distribution metrics (a real set vs a synthetic set): FID and MMD on the pooled layer4 features of a
3-D ResNet (``backbones``), as the paper did with Med3D; the backbone is recorded with every number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm.evaluation.backbones import BackboneInfo
from lungddpm.generation.export import DatasetPaths
from lungddpm.evaluation.distances import fid, mmd
from lungddpm.errors import InputError
from lungddpm.evaluation.features import DEFAULT_FEATURE_SIZE, extract_features
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.evaluation.metrics import near_mask, seam_score
from lungddpm.synthesis.profiles import NATIVE_HU_WINDOW, NativeProfile
from lungddpm.io.volume import Volume, read_volume, require_same_grid

SOFT_TISSUE_HU = (-300.0, 300.0)  # solid nodules and vessels; aerated lung is below −500, ground glass between
BLOB_MARGIN_MM = 3.0  # soft tissue this close to a layout nodule belongs to that nodule
BLOB_MIN_VOLUME_MM3 = 30.0  # smaller components are noise (a 4 mm sphere is 34 mm³)
BLOB_IN_REFERENCE = 0.5  # a component whose voxels are soft tissue in the reference at least this often is anatomy


def lung_masked_mse(synthetic: Volume, reference: Volume, layout: Volume,
                    window: tuple[float, float] = NATIVE_HU_WINDOW) -> dict[str, float]:
    """Mean squared difference inside the lung region, in model space [−1, 1] and in HU²."""
    region = layout.array >= LUNG
    if not region.any():
        raise InputError("the layout has no lung region (labels 1 or 2); the lung-masked MSE needs one")
    syn = synthetic.array[region].astype(np.float64)
    ref = reference.array[region].astype(np.float64)
    profile = NativeProfile(window)
    return {"mse_model": float(np.mean((profile.hu_to_model(syn) - profile.hu_to_model(ref)) ** 2)),
            "mse_hu2": float(np.mean((syn - ref) ** 2))}


def _soft(array: np.ndarray, soft_tissue_hu: tuple[float, float]) -> np.ndarray:
    """Voxels whose HU lies in the soft-tissue range."""
    return (array >= soft_tissue_hu[0]) & (array <= soft_tissue_hu[1])


def nodule_adherence(synthetic: Volume, layout: Volume, soft_tissue_hu: tuple[float, float] = SOFT_TISSUE_HU) -> float:
    """Fraction of nodule-layout voxels (label 2) that are soft tissue in the synthetic CT; NaN without nodules."""
    nodule = layout.array == NODULE
    return float(_soft(synthetic.array[nodule], soft_tissue_hu).mean()) if nodule.any() else math.nan


def spurious_blobs(synthetic: Volume, reference: Volume, layout: Volume, *,
                   soft_tissue_hu: tuple[float, float] = SOFT_TISSUE_HU, margin_mm: float = BLOB_MARGIN_MM,
                   min_volume_mm3: float = BLOB_MIN_VOLUME_MM3) -> dict[str, float]:
    """Nodule-like soft-tissue components in the lung, away from the layout's nodules, absent from the reference."""
    candidates = _soft(synthetic.array, soft_tissue_hu) & (layout.array >= LUNG)
    candidates &= ~near_mask(layout.array == NODULE, layout, margin_mm)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(candidates.astype(np.uint8)), True))
    sizes = np.bincount(labels.ravel())
    in_reference = np.bincount(labels.ravel(), weights=_soft(reference.array, soft_tissue_hu).ravel().astype(np.float64))
    voxel_mm3 = float(np.prod(layout.spacing))
    blobs = [n for n in range(1, len(sizes))
             if sizes[n] * voxel_mm3 >= min_volume_mm3 and in_reference[n] / sizes[n] < BLOB_IN_REFERENCE]
    return {"spurious_blobs": len(blobs), "spurious_volume_mm3": float(sum(sizes[n] for n in blobs) * voxel_mm3)}


def paired_metrics(synthetic: Volume, reference: Volume, layout: Volume, *,
                   soft_tissue_hu: tuple[float, float] = SOFT_TISSUE_HU) -> dict[str, float]:
    """All paired metrics of one synthetic CT against its reference and layout (all on one grid)."""
    require_same_grid(reference, synthetic, names=("reference", "synthetic CT"))
    require_same_grid(reference, layout, names=("reference", "layout"))
    return {**lung_masked_mse(synthetic, reference, layout),
            "seam_score": seam_score(synthetic, reference, layout),
            "nodule_adherence": nodule_adherence(synthetic, layout, soft_tissue_hu),
            **spurious_blobs(synthetic, reference, layout, soft_tissue_hu=soft_tissue_hu)}


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and count of each metric over cases (NaNs left out)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[key] = {"mean": float(values.mean()) if values.size else math.nan,
                    "std": float(values.std()) if values.size else math.nan, "n": int(values.size)}
    return out


def distribution_metrics(real: Iterable[Volume], synthetic: Iterable[Volume], backbone: torch.nn.Module, info: BackboneInfo,
                         *, size: int = DEFAULT_FEATURE_SIZE, device: str = "cpu") -> dict:
    """FID and MMD² (RBF with median bandwidth; KID's polynomial kernel) between two sets, naming the backbone."""
    x = extract_features(real, backbone, size, device)
    y = extract_features(synthetic, backbone, size, device)
    result: dict = {"backbone": info.describe(), "backbone_weights_sha256": info.sha256, "feature_size": size,
                    "n_real": len(x), "n_synthetic": len(y)}
    if min(len(x), len(y)) < 2:
        result["note"] = "not computed: FID and MMD need at least 2 volumes in each set"
        return result
    result.update({"fid": fid(x, y), "mmd_rbf": mmd(x, y, "rbf"), "mmd_polynomial": mmd(x, y, "polynomial")})
    return result


def case_volumes(paths: DatasetPaths, record: dict, references: dict[str, Volume]) -> tuple[Volume, Volume, Volume]:
    """(synthetic, reference, layout) of one case of a generated data set on one grid, or InputError naming the file.

    ``references`` holds the last reference read (cases are sorted by name, so a reference's variants come together).
    """
    files = {role: paths.root / record[key] for role, key in (("image", "image"), ("label", "label"), ("layout", "layout_file"))
             if record.get(key)}
    for role, file in files.items():
        if not file.is_file():
            raise InputError(f"its {role} file {file} is missing; run lungddpm generate again to remake the case")
    ref_path = Path(record["reference_path"])
    if record["reference_id"] not in references:
        if not ref_path.exists():
            raise InputError(f"its reference {ref_path} is gone; restore it to compute paired metrics")
        references.clear()
        references[record["reference_id"]] = read_volume(ref_path)
    reference = references[record["reference_id"]]
    volumes = {role: read_volume(files[role]) for role in ("image", "layout" if "layout" in files else "label")}
    for role, volume in volumes.items():
        require_same_grid(reference, volume, names=(str(ref_path), str(files[role])))
    synthetic, layout = volumes.values()
    return synthetic, reference, layout
