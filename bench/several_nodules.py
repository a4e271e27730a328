"""Nodules asking for different attributes in one run: apart (a cube each) and sharing one cube. Not a test.

Per held-out phantom (bench/held_out.py), two nodules are painted into its lung (add-nodule, plain balls):
a larger one (DIAMETERS_MM[0]) and a smaller one (DIAMETERS_MM[1]), once far apart (each has its own
Lung-DDPM+ cube, so each is conditioned on its own request) and once close enough, along a diagonal, to
share the larger one's cube (the printed "samples" says how many cubes the run used). The larger asks for ground-glass, the smaller for solid (``--nodules-json`` records, by centre). A
sample is conditioned on its largest nodule (synthesis/conditions.py), the rule a full-volume model applies to
all its nodules, so in the shared cube the smaller nodule is expected to follow the larger one's request. The
mean HU of each nodule is printed, per case, with the sample each was conditioned on.

    python bench/several_nodules.py --model demo-nodules --seeds 3
"""

from __future__ import annotations

import json
import time

import numpy as np

from held_out import bench_arguments, bench_model
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.layout.nodules import add_nodule
from lungddpm.layout.sidecar import NoduleRecord, match_records, nodule_components
from lungddpm.synthesis.synthesize import synthesize

LARGE, SMALL = NoduleAttributes(texture=1), NoduleAttributes(texture=5)  # ground-glass, solid
DIAMETERS_MM = (10.0, 6.0)  # both fit one 24-mm demo-nodules cube when 3 mm apart on a diagonal
DIAGONAL = np.ones(3) / np.sqrt(3)


def placed(case, diameters: tuple[float, float], gap_mm: float, direction: np.ndarray):
    """The case's lungs with the large nodule at its first nodule's centre and the small one gap_mm beyond its edge."""
    lungs = case.layout.with_array(np.minimum(case.layout.array, LUNG).astype(np.uint8))
    centre = np.asarray(case.nodules[0]["center_lps_mm"], float)
    other = centre + direction * (diameters[0] / 2 + gap_mm + diameters[1] / 2)
    layout = add_nodule(lungs, centre, diameters[0], require_in_lung=False)
    layout = add_nodule(layout, other, diameters[1], require_in_lung=False)
    return layout, [NoduleRecord(0, tuple(centre), LARGE), NoduleRecord(0, tuple(other), SMALL)]


def main() -> None:
    """Print JSON: per case and arrangement, each nodule's request, the sample's condition and its mean HU."""
    p = bench_arguments(__doc__, seeds=3, guidance=[3.0])
    args = p.parse_args()
    model, cases = bench_model(args)
    cube_mm = model.config.image_size * (model.config.patch_spacing_mm or 1.0)
    start, rows = time.perf_counter(), []
    for n, case in enumerate(cases):
        for arrangement, gap in (("apart", cube_mm), ("one cube", 3.0)):
            layout, records = placed(case, DIAMETERS_MM, gap, DIAGONAL)
            _, count = nodule_components(layout)
            result = synthesize(case.ct, layout, model, seed=n, sampler=args.sampler, steps=args.steps, device="cpu",
                                attributes=records, guidance=args.guidance[0])
            components, _ = nodule_components(layout)
            asked = match_records(layout, records)
            used = json.loads(result.metadata["nodule_attributes"])
            hu = {label: round(float(result.image.array[components == label].mean()), 1) for label in asked}
            rows.append({"case": n, "arrangement": arrangement, "nodules": count, "samples": len(used),
                         "requested_texture": {str(k): a.texture for k, a in asked.items()}, "mean_hu": hu,
                         "conditioned_on": used})
    summary = {}
    for arrangement in ("apart", "one cube"):
        chosen = [r for r in rows if r["arrangement"] == arrangement]
        by = {"large (ground-glass)": [], "small (solid)": []}
        for r in chosen:
            for label, texture in r["requested_texture"].items():
                by["large (ground-glass)" if texture == 1 else "small (solid)"].append(r["mean_hu"][int(label)])
        summary[arrangement] = {k: round(float(np.mean(v)), 1) for k, v in by.items()}
    print(json.dumps({"model": args.model, "guidance": args.guidance[0], "diameters_mm": list(DIAMETERS_MM), "summary": summary,
                      "cases": rows, "seconds": round(time.perf_counter() - start, 1)}, indent=1, default=str))


if __name__ == "__main__":
    main()
