"""Train the small bundled demo models on procedural phantoms with lungddpm's one trainer.

    python tools/train_demo_model.py --output engine/lungddpm/models/demo-native-32.pt
    python tools/train_demo_model.py --nodules --output engine/lungddpm/models/demo-nodules.pt

``--nodules`` trains ``demo-nodules``: a Lung-DDPM+-style patch model (nodule cubes of the phantom's own
voxels, nodule channel only) conditioned on the attributes ``NODULE_ATTRIBUTES``, with condition dropout
for classifier-free guidance. Its phantoms' nodules are described (``demo.phantom_attributes``): texture
at a uniformly drawn code, margin and spiculation too, every other characteristic plain; each nodule mask
gets its sidecar, so ``prepare`` lists each cube's nodule with its attributes.

The phantoms (random seeds, 0–3 random nodules each) are written as case folders (CT + nodule mask),
prepared with ``lungddpm prepare``'s own function (native profile, automatic lung mask, as the demo
uses) and trained with ``lungddpm train``'s own run (Alg. 1). The written file is a project checkpoint
holding only the EMA weights, stored as float16 to keep it small; the loader casts them back to float32.
(The bundled file was trained by an earlier single-process trainer with the same objective and
settings; this script is how to train it again.)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from lungddpm import load_model, save_checkpoint, write_volume
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.layout.sidecar import write_sidecar
from lungddpm.training.config import RunConfig
from lungddpm.training.prepare import prepare_dataset
from lungddpm.training.run import LATEST, run_training

DEMO_CONFIG = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=[1, 2, 2], attention_resolutions=[8],
                   timesteps=250, profile="native")
NODULE_ATTRIBUTES = ("texture", "margin", "spiculation")
NODULES_CONFIG = dict(DEMO_CONFIG, image_size=16, attention_resolutions=[4], profile="released-patch",
                      attributes=list(NODULE_ATTRIBUTES), guidance_scale=3.0)  # 16³ cubes: ~1 s per step of 8 on 2 CPU threads
NODULES_TRAINING = dict(ema_every=1)  # a short run: average over the last ~1/(1 - ema_decay) = 200 steps
NODULES_PER_PHANTOM = (1, 3)
MIN_NODULE_DIAMETER_MM = 10.0  # part-solid cores keep ≥ 2 in-plane voxels of the phantom (2.8 mm)


def write_phantom_cases(folder: Path, count: int, seed: int) -> Path:
    """`count` phantom case folders (ct.nrrd, and nodules.nrrd when the phantom has nodules)."""
    rng = random.Random(seed)
    for n in range(count):
        ph = make_phantom(phantom_grid(), seed=seed + n, nodules=rng.randint(0, 3))
        write_volume(ph.ct, folder / f"phantom{n:03d}" / "ct.nrrd")
        nodules = ph.layout.array == 2
        if nodules.any():
            write_volume(ph.layout.with_array(nodules.astype(np.uint8)), folder / f"phantom{n:03d}" / "nodules.nrrd")
    return folder


def write_described_cases(folder: Path, count: int, seed: int) -> Path:
    """`count` phantom case folders with described nodules: ct.nrrd, nodules.nrrd and its sidecar."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        plain = make_phantom(phantom_grid(), seed=seed + n, nodules=int(rng.integers(NODULES_PER_PHANTOM[0],
                                                                                      NODULES_PER_PHANTOM[1] + 1)))
        specs = [{"center_lps_mm": record["center_lps_mm"], "diameter_mm": max(record["diameter_mm"], MIN_NODULE_DIAMETER_MM),
                  "attributes": {name: int(rng.integers(1, 6)) for name in NODULE_ATTRIBUTES}}
                 for record in plain.nodules]  # the plain phantom's places: inside the lungs
        ph = make_phantom(phantom_grid(), seed=seed + n, nodules=specs)
        mask = folder / f"phantom{n:03d}" / "nodules.nrrd"
        write_volume(ph.ct, mask.with_name("ct.nrrd"))
        write_volume(ph.layout.with_array((ph.layout.array == 2).astype(np.uint8)), mask)
        write_sidecar(mask, ph.nodule_records())
    return folder


def main() -> None:
    """Build phantoms, prepare them, train, and write the float16 EMA checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--phantoms", type=int, default=48)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--nodules", action="store_true", help="train demo-nodules (attribute patch model) instead")
    p.add_argument("--init", default=None, help="continue from this checkpoint (e.g. an earlier run's latest.pt)")
    p.add_argument("--work", type=Path, default=Path("runs/demo-model"),
                   help="working folder; its prepared/ data are reused when present (same --phantoms and --seed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    write_cases, model_config, training = ((write_described_cases, NODULES_CONFIG, NODULES_TRAINING) if args.nodules
                                           else (write_phantom_cases, DEMO_CONFIG, {}))
    if not (args.work / "prepared" / "manifest.json").is_file():  # prepared data of an earlier attempt are reused
        cases = write_cases(args.work / "phantoms", args.phantoms, args.seed)
        prepare_dataset([cases], args.work / "prepared", profile=model_config["profile"],
                        size=model_config["image_size"], val_fraction=0.0, seed=args.seed)
    t_data = time.perf_counter() - t0
    config = RunConfig(data=[str(args.work / "prepared")], output=str(args.work / "run"), lr=args.lr,
                       batch_size=args.batch_size, grad_accum=args.grad_accum, ema_start=min(2000, args.steps // 2),
                       save_every=max(args.steps // 4, 1), steps=args.steps, seed=args.seed, device="cpu", workers=0,
                       preview_every=0, tensorboard=False, init=args.init, init_weights="model", **model_config, **training)
    run_training(config)
    ema_half = load_model(args.work / "run" / LATEST, device="cpu", weights="ema")
    ema_half.denoise_fn.half()
    save_checkpoint(args.output, ema_half, step=args.steps, store=("ema",),
                    extra={"training": {"phantoms": args.phantoms, "steps": args.steps, "lr": args.lr, "seed": args.seed,
                                        "batch_size": args.batch_size, "init": args.init,
                                        "data_seconds": round(t_data, 1), "total_seconds": round(time.perf_counter() - t0, 1)}})
    print(json.dumps({"output": str(args.output), "data_s": round(t_data, 1), "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
