"""Training speed and memory: steps/s and peak memory of one optimiser step at 64³ and 128³, fp32 vs bf16.

    PYTHONPATH=engine python bench/train_cpu.py --sizes 64 128 --channels 32 --steps 2 --threads 2

Each configuration runs in a fresh subprocess (so peak RSS belongs to it alone): a released-layout U-Net
(channel_mult as released for the size, attention at size/16) of the given width, batch 1, no gradient
accumulation, random data; one warm-up step, then `steps` timed steps. On a CUDA device the peak is
torch's max_memory_allocated; on the CPU it is the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

WORKER = """
import json, sys, time, torch
from lungddpm import LungDDPM
from lungddpm.model.config import released_lung_ddpm
from lungddpm.training.objective import loss_at
from lungddpm.training.runlog import peak_memory_mb
size, channels, bf16, steps, threads, device = sys.argv[1:]
size, channels, steps, threads, bf16 = int(size), int(channels), int(steps), int(threads), bf16 == "1"
torch.set_num_threads(threads)
device = torch.device(device)
model = LungDDPM(released_lung_ddpm(size, num_channels=channels)).to(device).train()
opt = torch.optim.Adam(model.denoise_fn.parameters(), lr=1e-5)
x = torch.rand(1, 1, size, size, size, device=device) * 2 - 1
cond = torch.ones(1, 2, size, size, size, device=device)
def step():
    t = torch.randint(0, model.config.timesteps, (1,), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = loss_at(model.denoise_fn, model.diffusion, x, cond, t, torch.randn_like(x))
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
step()
start = time.perf_counter()
for _ in range(steps):
    step()
rate = steps / (time.perf_counter() - start)
print(json.dumps({"size": size, "channels": channels, "bf16": bf16, "steps_per_s": round(rate, 4), **{k: round(v) for k, v in peak_memory_mb(device).items()}}))
"""


def main() -> None:
    """Run every (size, precision) configuration and print one JSON line each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    for size in args.sizes:
        for bf16 in ("0", "1"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", WORKER, str(size), str(args.channels), bf16, str(args.steps),
                                  str(args.threads), args.device], capture_output=True, text=True, check=True)
            print(out.stdout.strip(), f"# {time.perf_counter() - start:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
