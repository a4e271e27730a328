"""Fidelity of the fast samplers (default path) against 250-step DDPM in fp32 (the released settings) on the demo case.

A report, not a test.

    python bench/fidelity.py                              # demo model, 3 seeds, K in 10 20 25 50
    python bench/fidelity.py --model CKPT --seeds 0 1 2 3 --steps 10 20
    python bench/fidelity.py --write-baseline --seeds 0 1   # ddpm's statistics for the test (BASELINE)

Prints a table and a JSON document: per setting the seed-averaged lung/nodule HU statistics, the
seam score, seconds per run, the differences from ddpm and whether each is within tolerance.

Its comparison (run_setting, compare, TOLERANCES) is also what Testing/engine/evaluation/test_fidelity.py uses to
check that the default sampler setting passes, against ddpm's statistics stored in BASELINE by
`--write-baseline` (250 ddpm steps per seed are most of the check's cost; the file records the model's and
the case's SHA-256, and the test refuses a baseline made from another model or case).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lungddpm import load_model
from lungddpm.demo.demo import DEMO_MODEL, demo_case
from lungddpm.evaluation.metrics import region_stats, seam_score
from lungddpm.model.fastpath import RELEASED_PATH
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.precision import AUTO
from lungddpm.synthesis.synthesize import synthesize
from lungddpm.io.volume import Volume

BASELINE = Path(__file__).resolve().parents[1] / "Testing" / "engine" / "evaluation" / "fidelity_ddpm_baseline.json"
# Allowed differences between a setting's seed-averaged statistics and ddpm's.
TOLERANCES = {
    "lung_mean_hu": 25.0,  # |Δ mean HU| in the lung
    "lung_std_ratio": 0.2,  # |std / std_ddpm − 1| in the lung (texture strength)
    "nodule_mean_hu": 60.0,  # |Δ mean HU| in the nodules
    "seam_score": 0.15,  # |Δ seam score| (1 = gradient across the border like the reference's)
}


def run_setting(reference: Volume, layout: Volume, model: LungDDPM, sampler: str, steps: int | None,
                seeds: Sequence[int], device: str = "cpu", precision: str = AUTO) -> dict:
    """Seed-averaged statistics and seconds per run of one sampler setting (precision: auto, the default path)."""
    rows = []
    start = time.perf_counter()
    for seed in seeds:
        image = synthesize(reference, layout, model, seed=seed, sampler=sampler, steps=steps, device=device,
                           precision=precision).image
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


def made_from(model_path: Path, reference: Volume, layout: Volume) -> dict[str, str]:
    """The SHA-256 of a model file and of a case's CT and layout voxels: what a ddpm baseline was computed from."""
    def voxels(volume: Volume) -> str:
        return hashlib.sha256(np.ascontiguousarray(volume.array).tobytes()).hexdigest()
    return {"model_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
            "reference_sha256": voxels(reference), "layout_sha256": voxels(layout)}


def write_baseline(model_path: Path, seeds: Sequence[int], device: str, path: Path = BASELINE) -> dict:
    """Run ddpm (released settings) on demo_case(0) and store its statistics with what they were made from."""
    reference, layout, _ = demo_case(0)
    baseline = run_setting(reference, layout, load_model(model_path, device=device), "ddpm", None, seeds, device,
                           RELEASED_PATH.precision)
    record = {**baseline, **made_from(model_path, reference, layout), "case": "demo_case(0)",
              "precision": RELEASED_PATH.precision, "made_by": "python bench/fidelity.py --write-baseline --seeds "
              + " ".join(str(s) for s in seeds)}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    """Run ddpm and every (solver, K) on the same seeds and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 25, 50])
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp2m", "dpmpp3m"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-baseline", action="store_true",
                   help=f"only run ddpm on the seeds and store its statistics in {BASELINE} (the test's baseline)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.write_baseline:
        print(json.dumps(write_baseline(Path(args.model), args.seeds, args.device), indent=2))
        return
    model = load_model(args.model, device=args.device)
    reference, layout, _ = demo_case(0)
    baseline = run_setting(reference, layout, model, "ddpm", None, args.seeds, args.device, RELEASED_PATH.precision)
    rows = [{**baseline, "passes": True}]
    print(f"{'setting':14s} {'s/run':>7s} {'lung mean':>10s} {'lung std':>9s} {'nodule':>8s} {'seam':>6s}  pass")
    print(f"{'ddpm ' + str(baseline['steps']):14s} {baseline['seconds_per_run']:7.1f} {baseline['lung_mean_hu']:10.1f} "
          f"{baseline['lung_std_hu']:9.1f} {baseline['nodule_mean_hu']:8.1f} {baseline['seam_score']:6.3f}  (baseline)", flush=True)
    for sampler in args.samplers:
        for steps in args.steps:
            row = run_setting(reference, layout, model, sampler, steps, args.seeds, args.device)
            row.update(compare(row, baseline))
            rows.append(row)
            print(f"{sampler + ' ' + str(steps):14s} {row['seconds_per_run']:7.1f} {row['lung_mean_hu']:10.1f} "
                  f"{row['lung_std_hu']:9.1f} {row['nodule_mean_hu']:8.1f} {row['seam_score']:6.3f}  {row['passes']}", flush=True)
    print(json.dumps({"model": args.model, "tolerances": TOLERANCES, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
