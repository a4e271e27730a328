"""Per network pass, side by side: the released settings against our default path, same weights, in alternation.

The released settings are the released network (our U-Net is state-dict compatible and golden-equal
to it: Testing/engine/model/test_golden.py) run as released: fp32, legacy attention, contiguous
tensors (``model.fastpath.RELEASED_PATH``). Our default is ``pick_fast_path(device, "auto")``. Both
run on ONE model in ONE process, pass after pass in alternation (released, ours, released, ...), so
load from other processes on the machine hits both alike; the ratio of medians is the result.

FLOPs of one pass are counted with torch.utils.flop_counter.FlopCounterMode on the meta device
(convolutions, matrix products, attention; GroupNorm and element-wise work are not counted), and
achieved GFLOP/s is set against the CPU's peak (``peak_gflops``: how it is derived is printed).
End-to-end time and peak memory per setting: bench/sampling_speed.py. Not a test.

    python bench/engine_cpu.py                      # 32³, 64³, 128³ released-width networks, 3 rounds
    python bench/engine_cpu.py --sizes 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lungddpm import LungDDPM
from lungddpm.model.config import released_lung_ddpm
from lungddpm.model.fastpath import RELEASED_PATH, FastPath, pick_fast_path, running_on
from lungddpm.runtime.precision import CPUINFO, autocast, cpu_has_native_bf16

# FLOP per cycle and core: 2 AVX-512 FMA units × 16 fp32 lanes × 2 (multiply + add); AMX: Intel's stated
# 1024 bf16 FLOP/cycle/core; AVX-512 BF16 (vdpbf16ps): 2 units × 32 bf16 products × 2; AVX2: 2 × 8 × 2
FLOP_PER_CYCLE = {"fp32_avx512": 64, "fp32_avx2": 32, "bf16_amx": 1024, "bf16_avx512": 128}


def peak_gflops(precision: str) -> tuple[float, str]:
    """This CPU's peak GFLOP/s at `precision` over the threads in use, and how it was derived (cores × clock × FLOP/cycle)."""
    flags = Path(CPUINFO).read_text()
    mhz = max(float(line.split(":")[1]) for line in flags.splitlines() if line.startswith("cpu MHz"))
    cores = torch.get_num_threads()
    if precision == "bf16" and "amx_bf16" in flags:
        unit = "bf16_amx"
    elif precision == "bf16" and cpu_has_native_bf16():
        unit = "bf16_avx512"
    else:
        unit = "fp32_avx512" if "avx512f" in flags else "fp32_avx2"
    peak = cores * mhz / 1000 * FLOP_PER_CYCLE[unit]
    return peak, f"{cores} cores × {mhz / 1000:.2f} GHz (/proc/cpuinfo) × {FLOP_PER_CYCLE[unit]} FLOP/cycle ({unit})"


def unet_flops(size: int) -> int:
    """FLOPs of one forward pass of the released-width network at size³, counted on the meta device."""
    with torch.device("meta"):
        model = LungDDPM(released_lung_ddpm(size)).eval()
        x, cond = torch.zeros(1, 1, size, size, size), torch.zeros(1, 2, size, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.predict_noise(x, cond, torch.tensor([10]))
    return counter.get_total_flops()


def time_pass(model: LungDDPM, path: FastPath, x: torch.Tensor, cond: torch.Tensor) -> float:
    """Seconds of one network pass on `path` (set-up of the path not counted)."""
    with running_on(model, path), torch.no_grad(), autocast(x.device, path.precision):
        t0 = time.perf_counter()
        model.predict_noise(x, cond, torch.tensor([10]))
        return time.perf_counter() - t0


def compare_size(size: int, rounds: int) -> dict:
    """Released settings and our default at size³, in alternation; medians, ratio, GFLOP/s."""
    torch.manual_seed(0)
    model = LungDDPM(released_lung_ddpm(size)).eval()
    x = torch.randn(1, 1, size, size, size)
    cond = torch.where(torch.rand(1, 2, size, size, size) > 0.5, 1.0, -1.0)
    paths = {"released": RELEASED_PATH, "default": pick_fast_path(torch.device("cpu"))}
    for path in paths.values():
        time_pass(model, path, x, cond)  # warm-up: oneDNN primitives, allocator
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            times[name].append(time_pass(model, path, x, cond))
    flops = unet_flops(size)
    row = {"size": size, "gflop_per_pass": round(flops / 1e9, 1), "rounds": rounds}
    for name, path in paths.items():
        median = statistics.median(times[name])
        peak, how = peak_gflops(path.precision)
        row[name] = {**path.provenance(), "median_s": round(median, 3), "min_s": round(min(times[name]), 3),
                     "gflop_s": round(flops / median / 1e9, 1), "peak_gflop_s": round(peak), "peak_from": how,
                     "fraction_of_peak": round(flops / median / 1e9 / peak, 3)}
    row["speedup"] = round(row["released"]["median_s"] / row["default"]["median_s"], 2)
    row["peak_rss_mb_both"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def main() -> None:
    """Compare every size and print a table plus JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--rounds", type=int, default=3, help="timed passes per path (after one warm-up each)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        row = compare_size(size, args.rounds)
        rows.append(row)
        for name in ("released", "default"):
            r = row[name]
            print(f"{size:4d}³ {name:8s} {r['precision']} {r['attention']:6s} {r['memory_layout']:16s} "
                  f"{r['median_s']:8.3f} s/pass (min {r['min_s']:.3f})  {r['gflop_s']:7.1f} GFLOP/s = "
                  f"{100 * r['fraction_of_peak']:5.1f} % of {r['peak_gflop_s']} ({r['peak_from']})", flush=True)
        print(f"{size:4d}³ default is {row['speedup']}x the released settings per pass "
              f"({row['gflop_per_pass']} GFLOP/pass)", flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "python": platform.python_version(), "threads": args.threads, "native_bf16": cpu_has_native_bf16()}
    print(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
