"""Throughput of `lungddpm generate`: cases per minute with the variants of one reference batched, against one at a time.

The same data set is made twice per round in ONE process, in alternation (one variant per network pass,
``--batch 1``, then the default, ``auto``: as many variants per pass as fit in memory, at most 4), so load
from other processes hits both alike; each run writes a fresh data set (lung mask, sampling, writing: what a
user waits for). Also prints the largest |ΔHU| between the two runs' images, which only rounding moves
(Testing/engine/generation/test_generate.py). Not a test: the numbers depend on the machine and its load.

    python bench/batch_throughput.py                       # demo model (32³), 4 variants of one phantom, 3 rounds
    python bench/batch_throughput.py --model demo-nodules --variants 4 --nodules 1 --diameter-range 8 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungddpm.cli import _model_path
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.generation.export import dataset_folder
from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
from lungddpm.generation.shards import Shard
from lungddpm.io.volume import read_volume, write_volume
from lungddpm.model.checkpoints import load_model
from lungddpm.model.fastpath import auto_batch, available_bytes, pick_fast_path, sample_bytes


def make_set(refs: Path, model: Path, out: Path, settings: GenerateSettings) -> tuple[float, list[dict]]:
    """Wall seconds of one `generate` run into `out`, and its manifest."""
    t0 = time.perf_counter()
    generate(read_references(refs), model, dataset_folder(out, 501, "Bench"), settings, Shard(0, 1), progress="none")
    wall = time.perf_counter() - t0
    manifest = dataset_folder(out, 501, "Bench").root / "manifest.jsonl"
    return wall, [json.loads(line) for line in manifest.read_text().splitlines()]


def main() -> None:
    """Make the phantom, run both settings in alternation, print a table and JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="checkpoint, or 'demo' / 'demo-nodules'")
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: generate's, 10)")
    p.add_argument("--nodules", type=int, default=1)
    p.add_argument("--diameter-range", type=float, nargs=2, default=(20.0, 25.0))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = _model_path(args.model)
    config = load_model(model).config
    nodules = NoduleRequest(args.nodules, tuple(args.diameter_range))
    runs = {"one at a time": 1, "batched (auto)": None}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    manifests: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        refs = Path(tmp) / "refs"
        refs.mkdir()
        write_volume(make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=0).ct, refs / "chest0.nii.gz")
        for r in range(args.rounds + 1):  # round 0 warms up oneDNN and the allocator for both
            for name, batch in runs.items():
                settings = GenerateSettings(variants=args.variants, nodules=nodules, steps=args.steps, device="cpu",
                                            batch=batch)
                wall, manifests[name] = make_set(refs, model, Path(tmp) / f"{r}-{batch}", settings)
                if r:
                    walls[name].append(wall)
                    print(f"round {r} {name:15s} {wall:7.1f} s  {60 * args.variants / wall:6.1f} cases/min", flush=True)
        first, second = (Path(tmp) / f"{args.rounds}-{b}" for b in runs.values())
        diff = max(float(np.abs(read_volume(dataset_folder(first, 501, "Bench").image(m["case"])).array.astype(float)
                                - read_volume(dataset_folder(second, 501, "Bench").image(m["case"])).array).max())
                   for m in manifests["one at a time"])
    rows = {name: {"median_s": round(statistics.median(w), 1), "min_s": round(min(w), 1),
                   "cases_per_min": round(60 * args.variants / statistics.median(w), 2),
                   "batch": manifests[name][0]["batch"], "steps": manifests[name][0]["steps"]} for name, w in walls.items()}
    speedup = rows["one at a time"]["median_s"] / rows["batched (auto)"]["median_s"]
    print(json.dumps({"model": Path(model).name, "image_size": config.image_size, "variants": args.variants,
                      "threads": args.threads, "path": pick_fast_path(torch.device("cpu")).provenance(),
                      "auto_batch": auto_batch(config, torch.device("cpu"), args.variants),
                      "sample_gib": round(sample_bytes(config) / 2**30, 3),
                      "free_gib": round((available_bytes(torch.device("cpu")) or 0) / 2**30, 1),
                      "load_average": os.getloadavg(), "rows": rows, "throughput_ratio": round(speedup, 2),
                      "max_abs_hu_difference": diff}, indent=2))


if __name__ == "__main__":
    main()
