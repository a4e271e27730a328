"""CPU cost of one Lung-DDPM+ network pass (released 64³ patch configuration) for a batch of nodule cubes.

Each batch size runs in its own subprocess so that peak memory (max RSS) belongs to it alone. Random
weights: time and memory do not depend on them. Not a test: numbers depend on the machine and its load.

    python bench/patch_batch_cpu.py                  # batches of 1 and 4 cubes, 2 threads
    python bench/patch_batch_cpu.py --batches 1 2 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_case(batch: int, threads: int) -> dict:
    """One forward pass of the released Lung-DDPM+ network on `batch` cubes, in this process."""
    import torch

    from lungddpm import LungDDPM
    from lungddpm.model.config import released_lung_ddpm_plus

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LungDDPM(released_lung_ddpm_plus()).eval()
    x = torch.randn(batch, 1, 64, 64, 64)
    cond = torch.where(torch.rand(batch, 1, 64, 64, 64) > 0.5, 1.0, -1.0)
    start = time.perf_counter()
    with torch.no_grad():
        model.predict_noise(x, cond, torch.full((batch,), 10))
    return {"batch": batch, "threads": threads, "wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}


def main() -> None:
    """Run each batch size in a fresh subprocess and print one JSON line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one batch size here
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads)))
        return
    for batch in args.batches:
        out = subprocess.run([sys.executable, __file__, "--case", str(batch), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        print(out.strip(), flush=True)


if __name__ == "__main__":
    main()
