"""Does the requested texture control the synthetic nodule? Nodule mean HU per texture and guidance scale, over seeds.

For each seed, a held-out phantom (bench/held_out.py: seeds the demo-nodules training never used, nodules of
at least 10 mm) is synthesised with ``--nodule texture=<t>`` for every nodule, at each guidance scale w;
the number reported is the mean HU over the layout's nodule voxels of the output (image-based
adherence, docs: ../shared/notes/nodule-attributes.md). The phantom draws ground-glass nodules at
about −500 HU, part-solid ones as a solid core in a halo and solid ones at 20–60 HU. Not a test.

    python bench/nodule_attributes.py --model demo-nodules --seeds 6 --guidance 1 3 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from held_out import FIRST_SEED, held_out_case
from lungddpm.cli import _model_path
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE
from lungddpm.model.checkpoints import load_model
from lungddpm.synthesis.synthesize import synthesize

TEXTURES = {"ground-glass": 1, "part-solid": 3, "solid": 5}


def main() -> None:
    """Print a JSON table: per guidance scale and texture, the nodule mean HU per seed and their mean."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-nodules")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument("--sampler", default="dpmpp2m")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(_model_path(args.model), device="cpu")
    start = time.perf_counter()
    table: dict = {}
    for w in args.guidance:
        rows = {name: [] for name in TEXTURES}
        for n in range(args.seeds):
            ph = held_out_case(FIRST_SEED + n)
            nodule = ph.layout.array == NODULE
            for name, code in TEXTURES.items():
                result = synthesize(ph.ct, ph.layout, model, seed=n, sampler=args.sampler, steps=args.steps,
                                    device="cpu", attributes=NoduleAttributes(texture=code), guidance=w)
                rows[name].append(round(float(result.image.array[nodule].mean()), 1))
        means = {name: round(float(np.mean(v)), 1) for name, v in rows.items()}
        ordered = sum(g < ps < s for g, ps, s in zip(*rows.values()))
        table[f"w={w:g}"] = {"mean_hu": means, "per_seed_hu": rows, "ordered_seeds": f"{ordered}/{args.seeds}",
                             "solid_minus_ground_glass_hu": round(means["solid"] - means["ground-glass"], 1)}
    print(json.dumps({"model": args.model, "sampler": args.sampler, "steps": args.steps, "seeds": args.seeds,
                      "default_guidance": model.config.guidance_scale, "results": table,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()
