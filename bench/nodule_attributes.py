"""Do the requested attributes control the synthetic nodule? Texture, calcification per guidance scale, over seeds.

For each seed, a held-out phantom (bench/held_out.py: seeds the demo-nodules training never used, drawn
on the grid and with the nodule sizes the model file says it was trained on) whose nodules are plain solid is
synthesised with each request for every nodule, at each guidance scale w. Image-based adherence
(docs: ../shared/notes/nodule-attributes.md), over the layout's nodule voxels of the output:

- texture ground-glass / part-solid / solid: the nodule mean HU (the phantom draws ground-glass haze
  at about −650 HU, part-solid as a solid core in a halo, solid at 20–60 HU);
- calcification (texture solid), asked as a user words it: "calcified" (the prompt parser's meaning,
  solid calcification: calcium through the whole nodule), "central calcification" and "non-calcified":
  the mean HU of the nodule's core (voxels within CORE_FRACTION of the equivalent radius from the
  nodule's centroid; the phantom's central calcium has radius 0.35 of it; calcium is 400 HU).
- spiculation none (1) vs marked (5) (texture solid), each on the layout add-nodule paints for that
  request (bench/held_out.py ``outlined_layout``: spicules in the nodule mask, as a user placing the
  nodule gets them): the boundary irregularity of the nodule's dense region, as ``lungddpm evaluate``
  measures it (evaluation/adherence.py, the phantom as the reference), and of the layout's own mask.

Not a test.

    python bench/nodule_attributes.py --model demo-nodules --seeds 6 --guidance 1 3 5
"""

from __future__ import annotations

import json
import time

import numpy as np

from held_out import bench_arguments, bench_model, outlined_layout
from lungddpm.evaluation.adherence import nodule_measurements, shape_measures
from lungddpm.layout.attributes import NoduleAttributes, parse_prompt
from lungddpm.layout.labels import NODULE
from lungddpm.layout.sidecar import nodule_components
from lungddpm.sampling.options import DEFAULT_SOLVER_STEPS, default_steps
from lungddpm.synthesis.synthesize import synthesize

REQUESTS = {"ground-glass": "ground-glass", "part-solid": "part-solid", "solid": "solid",
            "calcified": "solid calcified", "central calcification": "solid, central calcification",
            "not calcified": "solid non-calcified"}  # prompts, as a user words them (layout.attributes.parse_prompt)
SPICULATION = {"not spiculated": dict(texture=5, spiculation=1), "spiculated": dict(texture=5, spiculation=5)}
CORE_FRACTION = 0.35


def core_masks(layout) -> np.ndarray:
    """The voxels within CORE_FRACTION of each nodule's equivalent radius from its centroid (in mm), at least one."""
    components, count = nodule_components(layout)
    spacing = np.asarray(layout.spacing)[::-1]  # (k, j, i)
    core = np.zeros(components.shape, bool)
    for label in range(1, count + 1):
        index = np.argwhere(components == label)
        centre = index.mean(axis=0)
        radius = (3 * len(index) * np.prod(spacing) / (4 * np.pi)) ** (1 / 3)
        distance = np.linalg.norm((index - centre) * spacing, axis=1)
        near = (distance <= CORE_FRACTION * radius) | (distance == distance.min())  # at least the central voxel
        core[tuple(index[near].T)] = True
    return core


def main() -> None:
    """Print a JSON table: per guidance scale and request, the nodule (core) mean HU per seed and their mean."""
    args = bench_arguments(__doc__, seeds=6, guidance=[1.0, 3.0, 5.0]).parse_args()
    model, cases = bench_model(args)
    start = time.perf_counter()
    table: dict = {}
    for w in args.guidance:
        rows = {name: [] for name in REQUESTS}
        for n, ph in enumerate(cases):
            nodule, core = ph.layout.array == NODULE, core_masks(ph.layout)
            for name, prompt in REQUESTS.items():
                result = synthesize(ph.ct, ph.layout, model, seed=n, sampler=args.sampler, steps=args.steps,
                                    device="cpu", attributes=parse_prompt(prompt), guidance=w)
                region = core if "calcif" in name else nodule
                rows[name].append(round(float(result.image.array[region].mean()), 1))
        irregularity = {name: {"image": [], "layout": []} for name in SPICULATION}
        for n, ph in enumerate(cases):
            for name, request in SPICULATION.items():
                if "spiculation" not in model.config.attributes:
                    continue
                attributes = NoduleAttributes(**request)
                layout = outlined_layout(ph, attributes, seed=n)
                result = synthesize(ph.ct, layout, model, seed=n, sampler=args.sampler, steps=args.steps,
                                    device="cpu", attributes=attributes, guidance=w)
                irregularity[name]["image"] += [m["irregularity"] for m in nodule_measurements(result.image, layout, ph.ct)]
                components, count = nodule_components(layout)
                irregularity[name]["layout"] += [shape_measures(components == c, layout.spacing)["irregularity"]
                                                 for c in range(1, count + 1)]
        means = {name: round(float(np.mean(v)), 1) for name, v in rows.items()}
        ordered = sum(g < ps < s for g, ps, s in zip(rows["ground-glass"], rows["part-solid"], rows["solid"]))
        table[f"w={w:g}"] = {"mean_hu": means, "per_seed_hu": rows, "texture_ordered_seeds": f"{ordered}/{args.seeds}",
                             "solid_minus_ground_glass_hu": round(means["solid"] - means["ground-glass"], 1),
                             "calcified_core_hu": means["calcified"], "central_calcification_core_hu":
                                 means["central calcification"], "uncalcified_core_hu": means["not calcified"],
                             "irregularity": {name: {where: round(float(np.nanmean(v)), 3) if v else None
                                                     for where, v in measured.items()}
                                              for name, measured in irregularity.items()}}
    print(json.dumps({"model": args.model, "sampler": args.sampler,
                      "steps": args.steps or default_steps(model.config.solver_steps, DEFAULT_SOLVER_STEPS), "seeds": args.seeds,
                      "default_guidance": model.config.guidance_scale, "results": table,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()
