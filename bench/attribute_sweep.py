"""How adherence and variety move with the guidance scale w: a sweep on held-out phantoms. Not a test.

For each w, each held-out phantom (bench/held_out.py) and each request of a factorial design over the model's
attributes (texture ground-glass / part-solid / solid, calcification central / absent (solid calcification would paint the whole nodule and hide its texture), margin and spiculation
at their two ends, those the model knows), K variants (sampling seeds 0 … K−1) are synthesised with the request for every
nodule, on the layout add-nodule paints for the request (held_out.outlined_layout: a spiculated request has spicules in
its nodule masks, as a user placing the nodule gets them). Each
nodule is measured on the output as `lungddpm evaluate` measures it (evaluation/adherence.py, with the phantom
as the reference) and scored per attribute (Spearman ρ of requested vs measured, evaluation.adherence.agreement);
variety is the mean pairwise |ΔHU| among the K variants (evaluation/variety.py) over the lung region (label ≥ 1;
in patch mode only the nodule cubes change, so this is diluted) and over the nodules (label 2).
Prints one JSON object, then a table.

    python bench/attribute_sweep.py --model demo-nodules --guidance 1 2 3 5 8 --seeds 2 --variants 2
"""

from __future__ import annotations

import itertools
import json
import time

import numpy as np

from held_out import bench_arguments, bench_model, outlined_layout
from lungddpm.evaluation.adherence import agreement, nodule_measurements
from lungddpm.evaluation.variety import mean_pairwise_difference
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE
from lungddpm.sampling.options import DEFAULT_SOLVER_STEPS, default_steps
from lungddpm.synthesis.synthesize import synthesize

LEVELS = {"texture": (1, 3, 5), "calcification": (5, 6), "margin": (1, 5), "spiculation": (1, 5)}  # codes asked of each


def design(known: tuple[str, ...]) -> list[NoduleAttributes]:
    """Every combination of LEVELS over the attributes the model knows."""
    names = [name for name in LEVELS if name in known]
    return [NoduleAttributes(**dict(zip(names, codes))) for codes in itertools.product(*(LEVELS[n] for n in names))]


def sweep_point(model, w: float, cases: list, variants: int, requests: list[NoduleAttributes], sampler: str,
                steps: int | None) -> dict:
    """Agreement and variety at one guidance scale over the held-out cases and requests."""
    nodules, lung_variety, nodule_variety = [], [], []
    for n, ph in enumerate(cases):
        for request in requests:
            layout = outlined_layout(ph, request, seed=n)  # spicules in the mask, as add-nodule paints them
            nodule_layout = (layout.array == NODULE).astype(np.uint8)
            images = []
            for k in range(variants):
                result = synthesize(ph.ct, layout, model, seed=k, sampler=sampler, steps=steps, device="cpu",
                                    attributes=request, guidance=w)
                images.append(result.image.array)
                nodules += [{**m, "requested": request.to_dict()}
                            for m in nodule_measurements(result.image, layout, ph.ct)]
            lung_variety.append(mean_pairwise_difference(images, [layout.array] * variants))
            nodule_variety.append(mean_pairwise_difference(images, [nodule_layout] * variants))
    return {"agreement": agreement(nodules), "nodules": len(nodules),
            "variety_lung_hu": float(np.mean(lung_variety)) if variants > 1 else None,
            "variety_nodule_hu": float(np.mean(nodule_variety)) if variants > 1 else None}


def _rho(point: dict, attribute: str, measure: str) -> str:
    """A Spearman ρ of the table, or '—'."""
    value = point["agreement"].get(attribute, {}).get(measure, {}).get("spearman_rho")
    return "—" if value is None or not np.isfinite(value) else f"{value:+.2f}"


def table(results: dict) -> str:
    """The sweep as a Markdown table: per w the ρ of each attribute, texture's mean HU per request and the variety."""
    lines = ["| w | texture ρ (mean HU) | mean HU GG / PS / S | margin ρ (edge) | spiculation ρ (irregularity) | "
             "variety lung / nodule (HU) |", "|---|---|---|---|---|---|"]
    for w, point in results.items():
        by = point["agreement"].get("texture", {}).get("mean_hu", {}).get("mean_by_requested", {})
        hu = " / ".join(f"{by[c]['mean']:.0f}" if c in by else "—" for c in ("1", "3", "5"))
        variety = ("—" if point["variety_lung_hu"] is None
                   else f"{point['variety_lung_hu']:.1f} / {point['variety_nodule_hu']:.1f}")
        lines.append(f"| {w} | {_rho(point, 'texture', 'mean_hu')} | {hu} | "
                     f"{_rho(point, 'margin', 'edge_sharpness_hu_per_mm')} | "
                     f"{_rho(point, 'spiculation', 'irregularity')} | {variety} |")
    return "\n".join(lines)


def main() -> None:
    """Run the sweep; print the JSON and the table."""
    p = bench_arguments(__doc__, seeds=2, guidance=[1.0, 2.0, 3.0, 5.0, 8.0])
    p.add_argument("--variants", type=int, default=2, help="K sampling seeds per case and request")
    args = p.parse_args()
    model, cases = bench_model(args)
    requests = design(model.config.attributes)
    start = time.perf_counter()
    results = {f"w={w:g}": sweep_point(model, w, cases, args.variants, requests, args.sampler, args.steps)
               for w in args.guidance}
    print(json.dumps({"model": args.model, "attributes": list(model.config.attributes), "sampler": args.sampler,
                      "steps": args.steps or default_steps(model.config.solver_steps, DEFAULT_SOLVER_STEPS),
                      "seeds": args.seeds, "variants": args.variants,
                      "requests": [r.to_dict() for r in requests], "default_guidance": model.config.guidance_scale,
                      "results": results, "seconds": round(time.perf_counter() - start, 1)}, indent=1, default=str))
    print(table(results))


if __name__ == "__main__":
    main()
