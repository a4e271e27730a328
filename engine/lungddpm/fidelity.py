"""Fidelity of fast samplers: do K-step outputs match 250-step DDPM outputs in distribution inside the lung?

For one reference and layout, each sampler setting is run over the same seeds; the per-run
statistics (mean and std of HU in lung and nodules, seam score across the lung border) are
averaged over seeds and compared with those of the released ancestral sampler (``ddpm``, all T
steps). A setting passes when every difference is within TOLERANCES.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .metrics import region_stats, seam_score
from .model import LungDDPM
from .synthesis import synthesize
from .volume import Volume

# Allowed differences between a setting's seed-averaged statistics and ddpm's.
TOLERANCES = {
    "lung_mean_hu": 25.0,  # |Δ mean HU| in the lung
    "lung_std_ratio": 0.2,  # |std / std_ddpm − 1| in the lung (texture strength)
    "nodule_mean_hu": 60.0,  # |Δ mean HU| in the nodules
    "seam_score": 0.15,  # |Δ seam score| (1 = gradient across the border like the reference's)
}


def run_setting(reference: Volume, layout: Volume, model: LungDDPM, sampler: str, steps: int | None,
                seeds: Sequence[int], device: str = "cpu") -> dict:
    """Seed-averaged statistics and seconds per run of one sampler setting."""
    rows = []
    start = time.perf_counter()
    for seed in seeds:
        image = synthesize(reference, layout, model, seed=seed, sampler=sampler, steps=steps, device=device).image
        rows.append({**region_stats(image, layout), "seam_score": seam_score(image, reference, layout)})
    averaged = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    return {"sampler": sampler, "steps": steps or model.config.timesteps, "seeds": list(seeds),
            "seconds_per_run": (time.perf_counter() - start) / len(seeds), **averaged}


def compare(setting: dict, baseline: dict) -> dict:
    """Differences of a setting from the ddpm baseline and whether each is within TOLERANCES."""
    diff = {
        "lung_mean_hu": setting["lung_mean_hu"] - baseline["lung_mean_hu"],
        "lung_std_ratio": setting["lung_std_hu"] / baseline["lung_std_hu"] - 1.0,
        "nodule_mean_hu": setting["nodule_mean_hu"] - baseline["nodule_mean_hu"],
        "seam_score": setting["seam_score"] - baseline["seam_score"],
    }
    passed = {key: bool(abs(value) <= TOLERANCES[key]) for key, value in diff.items()}
    return {"difference": diff, "within_tolerance": passed, "passes": all(passed.values())}
