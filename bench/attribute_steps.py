"""How many solver steps an attribute model needs: its requests' nodule HU per solver setting against its own ddpm.

For each held-out phantom (bench/held_out.py) and each request of bench/nodule_attributes.py (textures;
calcified, central calcification and non-calcified solid nodules), the nodule's mean HU (the core's for
calcification requests) after ddpm (all T steps, the model's own distribution) and after dpmpp2m at each of
--solver-steps. A setting agrees with ddpm when every texture request's seed-mean nodule HU lies within
--tolerance HU of ddpm's and every calcification request's core falls on the same side of 200 HU (calcified
or not) as ddpm's in every seed: a core is a handful of voxels, so what it is compared on is the call
that evaluate's adherence makes from it, not its HU. The
fewest agreeing steps is what a model file's ``solver_steps`` should say (``tools/train_demo_model.py``
writes it into demo-nodules). Not a test.

    python bench/attribute_steps.py --model demo-nodules --seeds 3 --solver-steps 3 5 10 20 50
"""

from __future__ import annotations

import json
import time

import numpy as np

from held_out import bench_arguments, bench_model
from nodule_attributes import REQUESTS, core_masks
from lungddpm.evaluation.adherence import CALCIFIED_HU
from lungddpm.layout.attributes import parse_prompt
from lungddpm.layout.labels import NODULE
from lungddpm.synthesis.synthesize import synthesize


def request_hu(model, cases, sampler: str, steps: int | None, guidance: float | None) -> dict[str, list[float]]:
    """Per request, the nodule (core, for calcification requests) mean HU of each held-out case."""
    rows: dict[str, list[float]] = {name: [] for name in REQUESTS}
    for n, ph in enumerate(cases):
        nodule, core = ph.layout.array == NODULE, core_masks(ph.layout)
        for name, prompt in REQUESTS.items():
            result = synthesize(ph.ct, ph.layout, model, seed=n, sampler=sampler, steps=steps, device="cpu",
                                attributes=parse_prompt(prompt), guidance=guidance)
            rows[name].append(round(float(result.image.array[core if "calcif" in name else nodule].mean()), 1))
    return rows


def agrees(rows: dict[str, list[float]], ddpm: dict[str, list[float]], tolerance: float) -> bool:
    """Every texture request's seed mean within tolerance HU of ddpm's, and every calcification call the same per seed."""
    close = all(abs(np.mean(rows[name]) - np.mean(ddpm[name])) <= tolerance for name in rows if "calcif" not in name)
    calls = all((a > CALCIFIED_HU) == (b > CALCIFIED_HU) for name in rows if "calcif" in name
                for a, b in zip(rows[name], ddpm[name]))
    return close and calls


def main() -> None:
    """Print a JSON table: ddpm's and each setting's HU per request, the differences, and the fewest agreeing steps."""
    p = bench_arguments(__doc__, seeds=3, guidance=[])
    p.add_argument("--solver-steps", type=int, nargs="+", default=[3, 5, 10, 20, 50], help="the settings compared")
    p.add_argument("--tolerance", type=float, default=50.0, help="HU a seed mean may lie from ddpm's")
    args = p.parse_args()
    settings = args.solver_steps
    model, cases = bench_model(args)
    guidance = args.guidance[0] if args.guidance else None
    start = time.perf_counter()
    ddpm = request_hu(model, cases, "ddpm", None, guidance)
    table, fewest = {}, None
    for steps in settings:
        t = time.perf_counter()
        rows = request_hu(model, cases, args.sampler, steps, guidance)
        ok = agrees(rows, ddpm, args.tolerance)
        fewest = steps if ok and fewest is None else fewest
        table[str(steps)] = {"mean_hu": {k: round(float(np.mean(v)), 1) for k, v in rows.items()},
                             "minus_ddpm_hu": {k: round(float(np.mean(v) - np.mean(ddpm[k])), 1) for k, v in rows.items()},
                             "per_seed_hu": rows, "agrees": ok, "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps({"model": args.model, "sampler": args.sampler, "seeds": args.seeds,
                      "guidance": guidance if guidance is not None else model.config.guidance_scale,
                      "model_solver_steps": model.config.solver_steps, "tolerance_hu": args.tolerance,
                      "ddpm": {"mean_hu": {k: round(float(np.mean(v)), 1) for k, v in ddpm.items()}, "per_seed_hu": ddpm},
                      "settings": table, "fewest_agreeing_steps": fewest,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()
