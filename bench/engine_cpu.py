"""CPU benchmark of the engine core: one forward pass of the released-width network and a full AAS loop.

Each measurement runs in its own subprocess so that peak memory (max RSS) belongs to it alone.
Prints a table and a JSON document. Not a test: numbers depend on the machine.

    python bench/engine_cpu.py                       # 32³, 64³, 128³ forward + full 32³ AAS loop (T = 250)
    python bench/engine_cpu.py --sizes 32 --aas-steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

# Measured with the released implementation on a 2-core CPU (float32), from the project notes.
RELEASED_FORWARD_S = {32: 1.9, 64: 6.7, 128: 56.0}


def _max_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(kind: str, size: int, threads: int, attention: str, aas_steps: int, repeats: int) -> dict:
    """Measure one case inside this process and return its numbers."""
    import torch

    from lungddpm import LungDDPM, make_generator, sample_aas
    from lungddpm.model.config import released_lung_ddpm

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = released_lung_ddpm(size, attention=attention, timesteps=aas_steps if kind == "aas" else 250)
    model = LungDDPM(config).eval()
    x = torch.randn(1, 1, size, size, size)
    cond = torch.where(torch.rand(1, 2, size, size, size) > 0.5, 1.0, -1.0)
    rss_model = _max_rss_mb()
    if kind == "forward":
        with torch.no_grad():
            model.predict_noise(x, cond, torch.tensor([10]))  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.predict_noise(x, cond, torch.tensor([10]))
                times.append(time.perf_counter() - t0)
        wall = min(times)
        passes = 1
    else:
        t0 = time.perf_counter()
        sample_aas(model, cond, x.clamp(-1, 1), generator=make_generator(0))
        wall = time.perf_counter() - t0
        passes = aas_steps
    return {
        "case": kind,
        "size": size,
        "attention": attention,
        "threads": threads,
        "network_passes": passes,
        "wall_s": round(wall, 3),
        "s_per_pass": round(wall / passes, 3),
        "peak_rss_mb": round(_max_rss_mb(), 1),
        "rss_after_model_mb": round(rss_model, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }


def main() -> None:
    """Run every case in a subprocess and print a table plus JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "legacy"])
    p.add_argument("--aas-size", type=int, default=32)
    p.add_argument("--aas-steps", type=int, default=250, help="T of the full AAS loop (released: 250); 0 skips it")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, size = args.one[0], int(args.one[1])
        print(json.dumps(run_case(kind, size, args.threads, args.attention, args.aas_steps, args.repeats)))
        return
    cases = [("forward", s) for s in args.sizes] + ([("aas", args.aas_size)] if args.aas_steps else [])
    results = []
    for kind, size in cases:
        cmd = [sys.executable, __file__, "--one", kind, str(size), "--threads", str(args.threads),
               "--attention", args.attention, "--aas-steps", str(args.aas_steps), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        if kind == "forward" and size in RELEASED_FORWARD_S:
            r["released_s_per_pass"] = RELEASED_FORWARD_S[size]
            r["ratio_vs_released"] = round(r["s_per_pass"] / RELEASED_FORWARD_S[size], 2)
        results.append(r)
        print(f"{kind:8s} {size:4d}³  passes {r['network_passes']:4d}  wall {r['wall_s']:9.2f} s  "
              f"{r['s_per_pass']:7.2f} s/pass  peak RSS {r['peak_rss_mb']:8.0f} MiB"
              + (f"  (released {r['released_s_per_pass']} s/pass, ratio {r['ratio_vs_released']})" if "ratio_vs_released" in r else ""),
              flush=True)
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
