"""Sampling speed: the released algorithm against the fast settings, on the same machine, in the same run.

(a) the released algorithm: 250-step ancestral DDPM with AAS, float32, legacy attention (run through this
    engine, which is golden-equal to the released code);
(b) fast settings "sampler:steps[:precision][:option...]": precision auto (the default path of
    ``model.fastpath.pick_fast_path``: its attention and layout too), fp32, bf16 or fp16; options:
    sdpa|legacy (attention, default sdpa), batchN (N variants in one pass; time per sample = wall / N),
    cl3d (channels-last-3d), compile (torch.compile, mode reduce-overhead = CUDA graphs on a GPU;
    compile time reported separately).

Each setting runs in its own subprocess (peak host RSS and peak GPU memory belong to it alone) on the
released-width network for the size (random weights: speed does not depend on them) and a synthetic
layout. Prints a table and a JSON document with ratios (b)/(a). Not a test.

    python bench/sampling_speed.py --size 32                         # CPU, everything measured in full
    python bench/sampling_speed.py --size 64 --released-passes 10    # (a) timed over 10 of its 250 passes
    python bench/sampling_speed.py --size 128 --device cuda --settings dpmpp2m:10 dpmpp2m:10:bf16 \\
        dpmpp2m:10:bf16:batch4 dpmpp2m:10:bf16:compile dpmpp2m:10:fp16:cl3d

With --released-passes N, (a) runs N of its 250 identical passes and its per-sample time is N-pass
time × 250 / N; the JSON marks such rows "extrapolated_from_passes". Every pass of the released loop
costs the same (one network forward at a new t), so this is a linear extrapolation of a measured rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

RELEASED = "ddpm:250:fp32:legacy"
DEFAULT_SETTINGS = ["dpmpp2m:3:auto", "ddim:10", "dpmpp2m:10", "dpmpp3m:10", "dpmpp2m:20", "dpmpp2m:10:bf16"]


class _StopAfter(Exception):
    """Raised from the progress callback to end a released run after the requested passes."""


def parse_setting(text: str) -> dict:
    """'dpmpp2m:10:bf16:batch4' -> sampler, steps, precision, attention, batch, cl3d, compile."""
    parts = text.split(":")
    s = {"name": text, "sampler": parts[0], "steps": int(parts[1]), "precision": "fp32", "attention": "sdpa",
         "batch": 1, "cl3d": False, "compile": False}
    for part in parts[2:]:
        if part in ("auto", "fp32", "bf16", "fp16"):
            s["precision"] = part
        elif part in ("sdpa", "legacy"):
            s["attention"] = part
        elif part.startswith("batch"):
            s["batch"] = int(part[5:])
        elif part in ("cl3d", "compile"):
            s[part] = True
        else:
            raise SystemExit(f"unknown option {part!r} in setting {text!r}")
    return s


def run_setting(setting: dict, size: int, device: str, threads: int, max_passes: int | None) -> dict:
    """Time one setting in this process; returns its row."""
    import torch

    from lungddpm import LungDDPM, make_generator
    from lungddpm.model.config import released_lung_ddpm
    from lungddpm.model.fastpath import FastPath, pick_fast_path, running_on
    from lungddpm.sampling.sample import sample as run_sampler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = LungDDPM(released_lung_ddpm(size)).to(dev).eval()
    if setting["precision"] == "auto":
        path = pick_fast_path(dev)
    else:
        path = FastPath(setting["precision"], setting["attention"], "channels_last_3d" if setting["cl3d"] else "contiguous")
    b = setting["batch"]
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * 3, indexing="ij"))
    lung = (grid.pow(2).sum(0) < 0.6).float()
    nodule = ((grid - 0.2).pow(2).sum(0) < 0.02).float()
    cond = (torch.stack([lung, nodule])[None] * 2 - 1).repeat(b, 1, 1, 1, 1).to(dev)
    x_ref = (torch.rand(b, 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    compile_s = None
    if setting["compile"]:
        model.denoise_fn = torch.compile(model.denoise_fn, mode="reduce-overhead" if dev.type == "cuda" else "default")
    generators = [make_generator(i, dev) for i in range(b)]

    def sample(stop: int | None) -> None:
        def progress(i: int, n: int) -> None:
            if stop is not None and i >= stop:
                raise _StopAfter

        try:
            with running_on(model, path):
                run_sampler(model, cond, x_ref, sampler=setting["sampler"], steps=setting["steps"], generator=generators,
                            progress=progress, precision=path.precision)
        except _StopAfter:
            pass

    if setting["compile"]:  # compile and capture before timing
        t0 = time.perf_counter()
        sample(2)
        compile_s = time.perf_counter() - t0
    if dev.type == "cuda":
        sample(1)  # CUDA context, cuDNN autotuning
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    passes = setting["steps"] if setting["sampler"] != "ddpm" else model.config.timesteps
    run_passes = min(passes, max_passes) if max_passes else passes
    t0 = time.perf_counter()
    sample(run_passes if run_passes < passes else None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    per_sample = wall * passes / run_passes / b
    row = {"setting": setting["name"], **path.provenance(), "size": size, "device": device, "threads": threads, "batch": b,
           "network_passes": passes, "per_sample_s": round(per_sample, 3), "s_per_pass": round(wall / run_passes, 4),
           "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if run_passes < passes:
        row["extrapolated_from_passes"] = run_passes
    if dev.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(dev)
    if compile_s is not None:
        row["compile_s"] = round(compile_s, 1)
    return row


def main() -> None:
    """Run (a) and every (b) in subprocesses, print a table with ratios and a JSON document."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    p.add_argument("--released-passes", type=int, default=None, help="time (a) over this many of its 250 passes")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        max_passes = args.released_passes if args.one == RELEASED else None
        print(json.dumps(run_setting(parse_setting(args.one), args.size, args.device, args.threads, max_passes)))
        return
    rows = []
    for name in [RELEASED, *args.settings]:
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--device", args.device,
               "--threads", str(args.threads)]
        if args.released_passes:
            cmd += ["--released-passes", str(args.released_passes)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if rows:
            base = rows[0]
            row["time_ratio_vs_released"] = round(row["per_sample_s"] / base["per_sample_s"], 4)
            row["speedup_vs_released"] = round(base["per_sample_s"] / row["per_sample_s"], 1)
            key = "peak_gpu_mb" if "peak_gpu_mb" in row else "peak_host_rss_mb"
            row["memory_ratio_vs_released"] = round(row[key] / base[key], 3)
        rows.append(row)
        note = f" (extrapolated from {row['extrapolated_from_passes']} passes)" if "extrapolated_from_passes" in row else ""
        mem = f"GPU {row['peak_gpu_mb']:8.0f} MiB" if "peak_gpu_mb" in row else f"RSS {row['peak_host_rss_mb']:8.0f} MiB"
        ratio = f"  {row['speedup_vs_released']:6.1f}x faster, memory x{row['memory_ratio_vs_released']}" if len(rows) > 1 else ""
        print(f"{name:28s} {args.size:4d}³ passes {row['network_passes']:4d}  {row['per_sample_s']:9.2f} s/sample  "
              f"{mem}{ratio}{note}", flush=True)
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "python": platform.python_version(), "threads": args.threads}
    print(json.dumps({"machine": machine, "released": RELEASED, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
