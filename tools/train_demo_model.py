"""Train the small bundled demo model (native profile) on procedural phantoms with lungddpm's own trainer.

    python tools/train_demo_model.py --output engine/lungddpm/models/demo-native-32.pt

The phantoms (random seeds, 0–3 random nodules each) are mapped into model space by the native
profile exactly as synthesis does, then Algorithm 1 runs on them. The written file is a project
checkpoint holding only the EMA weights, stored as float16 to keep it small; the loader casts them
back to float32.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

from lungddpm import LungDDPM, ModelConfig, save_checkpoint
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.synthesis.profiles import NativeProfile
from lungddpm.training.objective import TrainConfig, Trainer

DEMO_CONFIG = dict(
    image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_resolutions=(8,),
    in_channels=3, out_channels=1, timesteps=250, profile="native",
)


def phantom_cases(count: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_start, cond) model-space pairs from `count` phantoms with random nodules."""
    profile = NativeProfile()
    rng = random.Random(seed)
    cases = []
    for n in range(count):
        ph = make_phantom(phantom_grid(), seed=seed + n, nodules=rng.randint(0, 3))
        space = profile.encode(ph.ct, ph.layout, size, 2)
        cases.append((space.x_ref, space.cond))
    return cases


def shuffled_batches(cases: list, seed: int):
    """An endless iterator over the cases, reshuffled every epoch."""
    rng = random.Random(seed)
    for _ in itertools.count():
        order = list(range(len(cases)))
        rng.shuffle(order)
        for i in order:
            yield cases[i]


def main() -> None:
    """Build phantoms, train, and write the float16 EMA checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--phantoms", type=int, default=48)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/demo-model"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    cases = phantom_cases(args.phantoms, DEMO_CONFIG["image_size"], args.seed)
    t_data = time.perf_counter() - t0
    model = LungDDPM(ModelConfig(**DEMO_CONFIG))
    cfg = TrainConfig(lr=args.lr, grad_accum=args.grad_accum, ema_decay=0.995, ema_every=10, ema_start=min(2000, args.steps // 2),
                      save_every=max(args.steps // 4, 1), steps=args.steps, seed=args.seed, output_dir=str(args.work))
    trainer = Trainer(model, shuffled_batches(cases, args.seed), cfg)
    log_path = args.work / "log.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        trainer.fit(log=lambda r: log.write(json.dumps(r) + "\n") and log.flush())
    ema_half = LungDDPM(model.config)
    ema_half.denoise_fn.load_state_dict(trainer.ema.state_dict())
    ema_half.denoise_fn.half()
    save_checkpoint(args.output, ema_half, step=trainer.step, store=("ema",),
                    extra={"training": {"phantoms": args.phantoms, "steps": args.steps, "lr": args.lr, "seed": args.seed,
                                        "data_seconds": round(t_data, 1), "total_seconds": round(time.perf_counter() - t0, 1)}})
    print(json.dumps({"output": str(args.output), "data_s": round(t_data, 1), "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
