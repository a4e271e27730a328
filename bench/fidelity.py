"""Fidelity of the fast samplers against 250-step DDPM on the demo case (a report, not a test).

    python bench/fidelity.py                              # demo model, 3 seeds, K in 10 20 25 50
    python bench/fidelity.py --model CKPT --seeds 0 1 2 3 --steps 10 20

Prints a table and a JSON document: per setting the seed-averaged lung/nodule HU statistics, the
seam score, seconds per run, the differences from ddpm and whether each is within tolerance.
"""

from __future__ import annotations

import argparse
import json

import torch

from lungddpm import load_model
from lungddpm.demo import DEMO_MODEL, demo_case
from lungddpm.fidelity import TOLERANCES, compare, run_setting


def main() -> None:
    """Run ddpm and every (solver, K) on the same seeds and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 25, 50])
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp2m", "dpmpp3m"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    reference, layout, _ = demo_case(0)
    baseline = run_setting(reference, layout, model, "ddpm", None, args.seeds, args.device)
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
