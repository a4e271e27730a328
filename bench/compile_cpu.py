"""Does torch.compile pay on a CPU? Compile time against the per-pass gain, for the demo-sized U-Net, on the default path.

The demo model's configuration (``demo-native-32.pt``: 32 channels, channel_mult 1, 2, 2) at each size, random
weights, run on ``pick_fast_path(cpu)`` (on a CPU with native bf16: bf16 autocast, SDPA, channels-last-3d). One
process: the eager network and its ``torch.compile`` (inductor, mode default) are timed pass after pass in
alternation, so load from other processes hits both alike. The first compiled call is the compile time (cold,
or warm when ``TORCHINDUCTOR_CACHE_DIR`` holds an earlier run's code: run twice with the same folder to see the
cache). Break-even = compile time / (eager − compiled) passes, set against the default samplers' passes
(synthesize 3, generate 10). Not a test.

    python bench/compile_cpu.py                                   # 32³ and 64³, 5 rounds, 2 threads
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind python bench/compile_cpu.py --sizes 32   # twice: cold, then warm cache
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lungddpm import LungDDPM
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.model.checkpoints import load_model
from lungddpm.model.fastpath import pick_fast_path, running_on
from lungddpm.runtime.precision import autocast
from lungddpm.sampling.options import DEFAULT_SOLVER_STEPS, GENERATE_SOLVER_STEPS


def one_pass(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> float:
    """Seconds of one forward pass (inputs already on the path's layout)."""
    t0 = time.perf_counter()
    net(x, t)
    return time.perf_counter() - t0


def compare(size: int, rounds: int) -> dict:
    """Eager against compiled at size³ on the default CPU path: compile time, medians, break-even passes."""
    config = load_model(DEMO_MODEL).config
    config.image_size = size
    torch.manual_seed(0)
    model = LungDDPM(config).eval()
    cpu = torch.device("cpu")
    path = pick_fast_path(cpu)
    x = torch.randn(1, config.in_channels, size, size, size)
    if path.layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    t = torch.tensor([100])
    with running_on(model, path), torch.no_grad(), autocast(cpu, path.precision):
        eager = model.denoise_fn
        torch._dynamo.reset()  # each size compiles afresh, with static shapes (as a run of one size would)
        compiled = torch.compile(eager, dynamic=False)
        one_pass(eager, x, t)  # warm-up: oneDNN primitives, allocator
        compile_s = one_pass(compiled, x, t)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(rounds):
            times["eager"].append(one_pass(eager, x, t))
            times["compiled"].append(one_pass(compiled, x, t))
    median = {name: statistics.median(v) for name, v in times.items()}
    gain = median["eager"] - median["compiled"]
    break_even = compile_s / gain if gain > 0 else None
    return {"size": size, **path.provenance(), "rounds": rounds, "compile_s": round(compile_s, 1),
            **{f"{name}_median_s": round(m, 3) for name, m in median.items()},
            **{f"{name}_min_s": round(min(times[name]), 3) for name in times},
            "gain_per_pass_s": round(gain, 3), "break_even_passes": None if break_even is None else round(break_even),
            "pays_within": {f"synthesize ({DEFAULT_SOLVER_STEPS} passes)": bool(break_even and break_even <= DEFAULT_SOLVER_STEPS),
                            f"generate ({GENERATE_SOLVER_STEPS} passes)": bool(break_even and break_even <= GENERATE_SOLVER_STEPS)}}


def main() -> None:
    """Compare each size and print one JSON document with the load average before and after."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    rows = []
    for size in args.sizes:
        rows.append(compare(size, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": args.threads,
                      "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(inductor's default)"),
                      "load_average_before": before, "load_average_after": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
