"""The GPU check's training section: steps/s and peak memory of `lungddpm train` steps, one process.

    PYTHONPATH=engine python bench/gpu_train_check.py                 # on a GPU: 64³ and 128³, the released width 64
    PYTHONPATH=engine python bench/gpu_train_check.py --smoke         # CPU, 16³, a tiny network: seconds
    PYTHONPATH=engine python bench/gpu_train_check.py --json out.json # also write the records to a file

For each size × precision (fp32, bf16) × gradient checkpointing (off, on) a fresh subprocess builds the
real trainer (`training.run.TrainingRun`, the network `lungddpm train --set image_size=S` builds: native
profile, released channel_mult for S, batch 1, gradient accumulation 2 as released) on a synthetic
prepared folder (random model-space arrays, two cases), runs `--warmup` optimiser steps, then times
`--steps` more. Peak memory: torch's max_memory_allocated and max_memory_reserved on CUDA (what
nvidia-smi shows is close to reserved), the process's peak RSS on the CPU. A configuration that runs
out of memory is reported as such and the others still run. Prints one JSON line per configuration,
then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, tempfile, time, torch
from lungddpm.training.config import build_run_config
from lungddpm.training.distributed import DistContext
from lungddpm.training.run import TrainingRun
from lungddpm.training.runlog import peak_memory_mb
from lungddpm.runtime.device import resolve_device
data, device, warmup, steps, threads, workers, bf16, checkpointing, overrides = sys.argv[1:]
torch.set_num_threads(int(threads))
device = resolve_device(device)
with tempfile.TemporaryDirectory() as output:
    config = build_run_config(None, json.loads(overrides), data=[data], output=output, device=str(device), workers=int(workers),
                              bf16=bf16 == "1", grad_checkpoint=checkpointing == "1", tensorboard=False,
                              preview_every=0, val_every=0)
    record = {"bf16": config.bf16, "grad_checkpoint": config.grad_checkpoint, "device": str(device)}
    try:
        run = TrainingRun(config, DistContext(device=device))
        for _ in range(int(warmup)):
            run.train_step()
        start = time.perf_counter()
        for _ in range(int(steps)):
            run.train_step()  # float(loss) inside waits for the GPU
        seconds = (time.perf_counter() - start) / int(steps)
        record.update(steps_per_s=round(1 / seconds, 4), s_per_step=round(seconds, 4),
                      **{k: round(v) for k, v in peak_memory_mb(device).items()})
        if device.type == "cuda":
            record["gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20)
            record["gpu"] = torch.cuda.get_device_name(device)
    except torch.cuda.OutOfMemoryError:
        record["error"] = "out of memory"
print(json.dumps(record))
"""

TINY = ["channel_mult=[1,2]", "attention_resolutions=[8]", "num_channels=32", "timesteps=8"]  # --smoke's network


def write_prepared(folder: Path, size: int, cases: int = 2) -> Path:
    """A prepared folder (the layout `lungddpm prepare` writes) of random native-profile arrays at size³."""
    rng = np.random.default_rng(0)
    records = []
    for n in range(cases):
        case = folder / "cases" / f"random{n}"
        case.mkdir(parents=True)
        np.save(case / "x.npy", rng.uniform(-1, 1, (1, size, size, size)).astype(np.float32))
        np.save(case / "cond.npy", np.where(rng.random((2, size, size, size)) < 0.3, 1.0, -1.0).astype(np.float32))
        records.append({"case_id": f"random{n}", "patient_id": f"random{n}", "folder": f"cases/random{n}", "split": "train"})
    manifest = {"space": {"profile": "native", "size": size, "cond_channels": 2}, "cases": records}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def table(records: list[dict]) -> str:
    """The records as a Markdown table."""
    memory = "GPU peak alloc / reserved (MiB)" if any("gpu_peak_mb" in r for r in records) else "peak RSS (MiB)"
    lines = [f"| size | width | precision | grad ckpt | steps/s | s/step | {memory} |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            numbers = f"{r['error']} | | "
        else:
            mem = f"{r['gpu_peak_mb']} / {r['gpu_reserved_mb']}" if "gpu_peak_mb" in r else f"{r['peak_rss_mb']}"
            numbers = f"{r['steps_per_s']} | {r['s_per_step']} | {mem}"
        lines.append(f"| {r['size']}³ | {r['channels']} | {'bf16' if r['bf16'] else 'fp32'} | "
                     f"{'on' if r['grad_checkpoint'] else 'off'} | {numbers} |")
    return "\n".join(lines)


def main() -> None:
    """Run every configuration, print its JSON line, then the table; optionally write the records as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--channels", type=int, default=64, help="U-Net width (64: released)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads per configuration")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (the `workers` setting)")
    p.add_argument("--smoke", action="store_true", help="CPU, 16³, a tiny network, 1 + 2 steps, no workers (checks the script)")
    p.add_argument("--json", type=Path, help="also write the records to this file")
    args = p.parse_args()
    overrides = [f"num_channels={args.channels}"]
    if args.smoke:
        args.sizes, args.device, args.warmup, args.steps, args.threads, args.workers = [16], "cpu", 1, 2, 1, 0
        overrides = TINY
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data = write_prepared(Path(tmp) / f"prepared{size}", size)
            for bf16 in ("0", "1"):
                for checkpointing in ("0", "1"):
                    start = time.perf_counter()
                    done = subprocess.run([sys.executable, "-c", WORKER, str(data), args.device, str(args.warmup),
                                           str(args.steps), str(args.threads), str(args.workers), bf16, checkpointing,
                                           json.dumps([f"image_size={size}", *overrides])],
                                          capture_output=True, text=True)
                    if done.returncode != 0:
                        sys.exit(f"gpu_train_check: size {size}, bf16 {bf16}, checkpointing {checkpointing} failed:\n"
                                 f"{done.stderr[-3000:]}")
                    record = {"size": size, "channels": 32 if args.smoke else args.channels, **json.loads(done.stdout),
                              "wall_s": round(time.perf_counter() - start, 1)}
                    records.append(record)
                    print(json.dumps(record), flush=True)
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
