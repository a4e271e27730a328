"""The GPU check, sampling part: what bench/gpu_check.sh runs (≤ 8 minutes on one H100/H200).

1. precision differences on a fixed input: one forward pass of the 128³ network (fixed random weights
   and input) in fp32 legacy (the released settings), fp32 SDPA, bf16 and fp16; max / mean |Δε̂|;
2. per pass, in alternation on one model: the released settings against our default, SDPA (flash /
   memory-efficient kernels) against legacy attention, bf16 and fp16; GFLOP/s against the GPU's peak;
3. end to end (bench/sampling_speed.py, each setting in its own process: peak GPU memory is its own):
   the released algorithm (ddpm 250, fp32, legacy; timed over --released-passes of its 250 identical
   passes and scaled) against our default (dpmpp2m 3, auto), bf16, fp16, torch.compile with CUDA graphs,
   batch 1 / 2 / 4 at 128³, and a 64³ run of 4 cubes per pass (the patch mode's batch);

and prints one JSON document (and a table) with all of it. ``--smoke``: the same on whatever device
there is at 32³ with one timed pass per path and fewer settings (fp16, torch.compile and batch 4 left
out on a CPU), so the script is known to run end to end before a GPU comes. Not a test.

    python bench/gpu_check.py --smoke
    python bench/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from engine_cpu import time_pass, unet_flops
from lungddpm import LungDDPM
from lungddpm.model.config import released_lung_ddpm
from lungddpm.model.fastpath import RELEASED_PATH, FastPath, pick_fast_path, running_on
from lungddpm.runtime.precision import autocast

BENCH = Path(__file__).resolve().parent
# dense peak TFLOP/s (fp32 without tensor cores, bf16/fp16 tensor cores) from NVIDIA's data sheets
GPU_PEAK_TFLOPS = {"H200": {"fp32": 67, "bf16": 989, "fp16": 989}, "H100 PCIe": {"fp32": 51, "bf16": 756, "fp16": 756},
                   "H100": {"fp32": 67, "bf16": 989, "fp16": 989}, "A100": {"fp32": 19.5, "bf16": 312, "fp16": 312}}


def gpu_peak(device: torch.device, precision: str) -> float | None:
    """The GPU's data-sheet peak GFLOP/s at `precision` (None: not a GPU in GPU_PEAK_TFLOPS)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = next((k for k in GPU_PEAK_TFLOPS if k in name), None)
    return None if key is None else GPU_PEAK_TFLOPS[key][precision] * 1000


def precision_differences(size: int, device: torch.device, paths: dict[str, FastPath]) -> dict:
    """max / mean |ε̂ − ε̂_released| of one forward pass per path, fixed weights and input."""
    torch.manual_seed(0)
    model = LungDDPM(released_lung_ddpm(size)).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():  # the released init zeroes the output layers; a fixed random network instead
            p.normal_(0.0, 0.02)
    x = torch.randn(1, 1, size, size, size, device=device)
    cond = torch.where(torch.rand(1, 2, size, size, size, device=device) > 0.5, 1.0, -1.0)
    out = {}
    for name, path in paths.items():
        with running_on(model, path), torch.no_grad(), autocast(device, path.precision):
            out[name] = model.predict_noise(x, cond, torch.tensor([10], device=device)).float()
    ref = out["released"]
    return {name: {"max_abs": float((y - ref).abs().max()), "mean_abs": float((y - ref).abs().mean()),
                   "ref_std": float(ref.std())} for name, y in out.items() if name != "released"}


def per_pass(size: int, device: torch.device, paths: dict[str, FastPath], rounds: int) -> dict:
    """Median seconds per pass of each path, in alternation on one model, with GFLOP/s and the peak."""
    torch.manual_seed(0)
    model = LungDDPM(released_lung_ddpm(size)).to(device).eval()
    x = torch.randn(1, 1, size, size, size, device=device)
    cond = torch.where(torch.rand(1, 2, size, size, size, device=device) > 0.5, 1.0, -1.0)

    def one(path: FastPath) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with running_on(model, path), torch.no_grad(), autocast(device, path.precision):
                start.record()
                model.predict_noise(x, cond, torch.tensor([10], device=device))
                end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        return time_pass(model, path, x, cond)

    for path in paths.values():
        one(path)  # warm-up (cuDNN autotuning, oneDNN primitives)
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            times[name].append(one(path))
    flops = unet_flops(size)
    rows = {}
    for name, path in paths.items():
        median = statistics.median(times[name])
        peak = gpu_peak(device, path.precision)
        rows[name] = {**path.provenance(), "median_s": round(median, 4), "gflop_s": round(flops / median / 1e9, 1),
                      "fraction_of_peak": None if peak is None else round(flops / median / 1e9 / peak, 3)}
    base = rows["released"]["median_s"]
    for row in rows.values():
        row["speedup_vs_released"] = round(base / row["median_s"], 2)
    return {"size": size, "gflop_per_pass": round(flops / 1e9, 1), "rounds": rounds, "paths": rows}


def end_to_end(size: int, device: str, settings: list[str], released_passes: int) -> list[dict]:
    """bench/sampling_speed.py's rows (released first, then `settings`), each setting in its own process."""
    cmd = [sys.executable, str(BENCH / "sampling_speed.py"), "--size", str(size), "--device", device,
           "--threads", str(torch.get_num_threads()), "--released-passes", str(released_passes), "--settings", *settings]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("\n{") + 1:])["rows"]


def main() -> None:
    """Run the three parts and print a table plus one JSON document."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="32³, few passes: check that everything runs")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    size, patch_size = (32, 32) if args.smoke else (128, 64)
    rounds, released_passes = (1, 1) if args.smoke else (5, 25)
    paths = {"released": RELEASED_PATH, "default": pick_fast_path(device), "fp32_sdpa": FastPath("fp32", "sdpa"),
             "bf16_sdpa": FastPath("bf16", "sdpa")}
    if gpu:
        paths["fp16_sdpa"] = FastPath("fp16", "sdpa")
        paths["bf16_legacy"] = FastPath("bf16", "legacy")
    settings = ["dpmpp2m:3:auto", "dpmpp2m:3:bf16:batch2"]
    if gpu:
        settings += ["dpmpp2m:3:bf16", "dpmpp2m:3:bf16:batch4", "dpmpp2m:3:fp16", "dpmpp2m:3:bf16:compile"]
    skipped = [] if gpu else ["fp16 (a GPU setting)", "torch.compile + CUDA graphs (GPU only in this check)"]
    report = {"device": str(device), "name": torch.cuda.get_device_name(device) if gpu else platform.processor(),
              "torch": torch.__version__, "smoke": args.smoke, "skipped": skipped}
    report["precision_differences"] = precision_differences(size, device, paths)
    for name, d in report["precision_differences"].items():
        print(f"fixed input {size}³  {name:12s} max |Δε̂| {d['max_abs']:.2e}  mean {d['mean_abs']:.2e}  "
              f"(ε̂ std {d['ref_std']:.2f})", flush=True)
    report["per_pass"] = per_pass(size, device, paths, rounds)
    for name, r in report["per_pass"]["paths"].items():
        print(f"per pass {size}³  {name:12s} {r['median_s']:8.4f} s  {r['gflop_s']:9.1f} GFLOP/s  "
              f"{r['speedup_vs_released']:6.2f}x released", flush=True)
    report["end_to_end"] = end_to_end(size, args.device, settings, released_passes)
    report["patch_batch"] = end_to_end(patch_size, args.device, [f"dpmpp2m:3:auto:batch{2 if args.smoke else 4}"],
                                       released_passes)
    for row in report["end_to_end"] + report["patch_batch"]:
        mem = row.get("peak_gpu_mb", row["peak_host_rss_mb"])
        print(f"end to end {row['size']}³  {row['setting']:26s} {row['per_sample_s']:9.2f} s/sample  peak {mem:8.0f} MiB  "
              f"{row.get('speedup_vs_released', 1.0)}x", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
