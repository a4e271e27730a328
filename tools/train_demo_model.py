"""Train the small bundled demo models on procedural phantoms with lungddpm's one trainer.

    python tools/train_demo_model.py --output engine/lungddpm/models/demo-native-32.pt
    python tools/train_demo_model.py --nodules --output engine/lungddpm/models/demo-nodules.pt

``--nodules`` trains ``demo-nodules``: a Lung-DDPM+-style patch model (profile native-patch: 16³ nodule
cubes of 1.5 mm voxels, nodule channel only, the native fixed HU window so that a calcified core can come
out brighter than its reference) conditioned on the attributes ``NODULE_ATTRIBUTES``, with condition
dropout for classifier-free guidance. Its phantoms are drawn on a finer grid than the demo's
(``NODULE_PHANTOM_GRID``, the cubes' own voxel size) so that spicules and calcified cores are resolved;
their nodules are described (``demo.phantom_attributes``): texture, margin and spiculation at uniformly
drawn codes, calcification absent in ``1 - --calcified-share`` of them and otherwise a uniformly drawn
pattern, every other characteristic plain; each nodule mask gets its sidecar, so ``prepare`` lists each
cube's nodule with its attributes.

The phantoms (phantom n drawn from (seed, n) alone; 0–3 random nodules each for the demo model) are
written as case folders (CT + nodule mask) in ``--jobs`` shards of processes, each shard prepared with
``lungddpm prepare``'s own function (the model's profile, automatic lung mask, as the demo uses), and
trained on all shards with ``lungddpm train``'s own run (Alg. 1). The written file is a project
checkpoint holding only the EMA weights, stored as float16 to keep it small; the loader casts them back
to float32. (The bundled demo-native-32 file was trained by an earlier single-process trainer with the
same objective and settings; this script is how to train it again.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
NODULE_ATTRIBUTES = ("texture", "calcification", "margin", "spiculation")
CUBE_SPACING_MM = 1.5
NODULES_CONFIG = dict(DEMO_CONFIG, image_size=16, attention_resolutions=[4], profile="native-patch",
                      patch_spacing_mm=CUBE_SPACING_MM, attributes=list(NODULE_ATTRIBUTES),
                      guidance_scale=3.0)  # 16³ cubes: ~1.5 steps of 8 per s on 1 CPU thread
NODULES_SOLVER_STEPS = 10  # written into the file after training; measured on the bundled run with
# python bench/attribute_steps.py (a property of the trained model, not of training: re-measure after a retrain)
NODULES_TRAINING = dict(ema_every=1)  # a short run: average over the last ~1/(1 - ema_decay) = 200 steps
NODULES_PER_PHANTOM = (2, 4)
NODULE_DIAMETER_MM = (8.0, 12.0)  # a marked spiculated 12-mm nodule still fits a 16³ cube of 1.5 mm with its border
NODULE_PHANTOM_GRID = dict(size=(240, 240, 192), spacing=(CUBE_SPACING_MM,) * 3)  # the demo phantom's extent
CALCIFIED_SHARE = 0.5  # default share of nodules drawn with a calcification pattern (codes 1-5); the rest absent (6)


def write_phantom_case(folder: Path, n: int, seed: int) -> None:
    """Phantom case folder n (ct.nrrd, and nodules.nrrd when the phantom has nodules), drawn from (seed, n) alone."""
    ph = make_phantom(phantom_grid(), seed=seed + n, nodules=int(np.random.default_rng((seed, n)).integers(0, 4)))
    write_volume(ph.ct, folder / f"phantom{n:03d}" / "ct.nrrd")
    nodules = ph.layout.array == 2
    if nodules.any():
        write_volume(ph.layout.with_array(nodules.astype(np.uint8)), folder / f"phantom{n:03d}" / "nodules.nrrd")


def drawn_attributes(rng: np.random.Generator, calcified_share: float = CALCIFIED_SHARE) -> dict[str, int]:
    """One training nodule's characteristics: uniform texture, margin and spiculation codes; calcified in calcified_share."""
    codes = {name: int(rng.integers(1, 6)) for name in ("texture", "margin", "spiculation")}
    codes["calcification"] = int(rng.integers(1, 6)) if rng.random() < calcified_share else 6
    return codes


def write_described_case(folder: Path, n: int, seed: int, calcified_share: float = CALCIFIED_SHARE) -> None:
    """Phantom case folder n with described nodules (ct.nrrd, nodules.nrrd and its sidecar), drawn from (seed, n) alone."""
    rng = np.random.default_rng((seed, n))
    grid = phantom_grid(**NODULE_PHANTOM_GRID)
    plain = make_phantom(grid, seed=seed + n, nodules=int(rng.integers(NODULES_PER_PHANTOM[0], NODULES_PER_PHANTOM[1] + 1)))
    specs = [{"center_lps_mm": record["center_lps_mm"], "diameter_mm": float(rng.uniform(*NODULE_DIAMETER_MM)),
              "attributes": drawn_attributes(rng, calcified_share)} for record in plain.nodules]  # the plain phantom's places: in the lungs
    ph = make_phantom(grid, seed=seed + n, nodules=specs)
    mask = folder / f"phantom{n:03d}" / "nodules.nrrd"
    write_volume(ph.ct, mask.with_name("ct.nrrd"))
    write_volume(ph.layout.with_array((ph.layout.array == 2).astype(np.uint8)), mask)
    write_sidecar(mask, ph.nodule_records())


def prepare_shard(job: tuple[bool, Path, int, int, int, int, float]) -> str:
    """Write phantoms shard, shard + shards, ... below `phantoms`, and prepare them; returns the prepared folder."""
    described, work, shard, shards, count, seed, calcified_share = job
    torch.set_num_threads(1)
    folder, config = work / f"phantoms-{shard}", NODULES_CONFIG if described else DEMO_CONFIG
    for n in range(shard, count, shards):
        if described:
            write_described_case(folder, n, seed, calcified_share)
        else:
            write_phantom_case(folder, n, seed)
    prepared = work / f"prepared-{shard}"
    prepare_dataset([folder], prepared, profile=config["profile"], size=config["image_size"], val_fraction=0.0, seed=seed,
                    patch_spacing_mm=config.get("patch_spacing_mm"))
    return str(prepared)


def main() -> None:
    """Build phantoms, prepare them, train, and write the float16 EMA checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--phantoms", type=int, default=48)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="the phantoms' seed (phantom n is drawn from (seed, n))")
    p.add_argument("--train-seed", type=int, default=None,
                   help="the training run's seed (initial weights, t, noise, condition dropout; default: --seed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--nodules", action="store_true", help="train demo-nodules (attribute patch model) instead")
    p.add_argument("--calcified-share", type=float, default=CALCIFIED_SHARE,
                   help="--nodules: the share of training nodules drawn with a calcification pattern")
    p.add_argument("--init", default=None, help="continue from this checkpoint (e.g. an earlier run's latest.pt)")
    p.add_argument("--work", type=Path, default=Path("runs/demo-model"),
                   help="working folder; its prepared-<shard>/ data are reused when present (same --phantoms, --seed, --jobs)")
    p.add_argument("--jobs", type=int, default=1, help="processes writing and preparing the phantoms (shards)")
    args = p.parse_args()
    if not 0 <= args.calcified_share <= 1:
        p.error(f"--calcified-share {args.calcified_share} must be a share between 0 and 1 (e.g. 0.5)")
    train_seed = args.seed if args.train_seed is None else args.train_seed
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model_config, training = (NODULES_CONFIG, NODULES_TRAINING) if args.nodules else (DEMO_CONFIG, {})
    jobs = [(args.nodules, args.work, shard, args.jobs, args.phantoms, args.seed, args.calcified_share)
            for shard in range(args.jobs)]
    prepared = [str(args.work / f"prepared-{shard}") for shard in range(args.jobs)]
    if not all((Path(folder) / "manifest.json").is_file() for folder in prepared):  # an earlier attempt's are reused
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            prepared = pool.map(prepare_shard, jobs)
    t_data = time.perf_counter() - t0
    config = RunConfig(data=prepared, output=str(args.work / "run"), lr=args.lr,
                       batch_size=args.batch_size, grad_accum=args.grad_accum, ema_start=min(2000, args.steps // 2),
                       save_every=max(args.steps // 4, 1), steps=args.steps, seed=train_seed, device="cpu", workers=0,
                       preview_every=0, tensorboard=False, init=args.init, init_weights="model", **model_config, **training)
    run_training(config)
    ema_half = load_model(args.work / "run" / LATEST, device="cpu", weights="ema")
    ema_half.denoise_fn.half()
    if args.nodules:
        ema_half.config.solver_steps = NODULES_SOLVER_STEPS
    save_checkpoint(args.output, ema_half, step=args.steps, store=("ema",),
                    extra={"training": {"phantoms": args.phantoms, "jobs": args.jobs,
                                        **({"phantom_grid": NODULE_PHANTOM_GRID, "nodule_diameter_mm": NODULE_DIAMETER_MM,
                                            "nodules_per_phantom": NODULES_PER_PHANTOM, "calcified_share": args.calcified_share}
                                           if args.nodules else {}), "steps": args.steps, "lr": args.lr, "seed": args.seed,
                                        "train_seed": train_seed,
                                        "batch_size": args.batch_size, "init": args.init,
                                        "data_seconds": round(t_data, 1), "total_seconds": round(time.perf_counter() - t0, 1)}})
    print(json.dumps({"output": str(args.output), "data_s": round(t_data, 1), "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
