"""`lungddpm evaluate`: a generated data set -> report.json + report.md with tables and slice images.

Besides fidelity (``paired``, FID/MMD), per synthetic nodule its image measurements (``adherence``) with the
attributes its case's provenance says were requested, their agreement per attribute, and the variety among the
variants of each reference (``variety``), each per guidance scale w.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from lungddpm import __version__
from lungddpm.evaluation.adherence import agreement, nodule_measurements
from lungddpm.evaluation.backbones import BackboneInfo
from lungddpm.errors import InputError
from lungddpm.evaluation.features import DEFAULT_FEATURE_SIZE, check_feature_size
from lungddpm.evaluation.paired import (BLOB_MARGIN_MM, BLOB_MIN_VOLUME_MM3, SOFT_TISSUE_HU, case_volumes, distribution_metrics,
                                        paired_metrics, summarize)
from lungddpm.generation.export import DatasetPaths, read_provenance
from lungddpm.io.atomic import outputs_together, write_text
from lungddpm.io.outputs import check_output_folder
from lungddpm.io.volume import Volume, read_volume
from lungddpm.evaluation.variety import VarietyGroups
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE
from lungddpm.layout.sidecar import NoduleRecord, match_records
from lungddpm.runtime.preview import slice_panels, write_png
from lungddpm.synthesis.profiles import NATIVE_HU_WINDOW

PAIRED_COLUMNS = ("mse_model", "mse_hu2", "seam_score", "nodule_adherence", "spurious_blobs")
REPORT_BYTES = 1 << 20  # report.json and report.md: well below 1 MiB for thousands of cases
PREVIEW_BYTES = 4 << 20  # one preview PNG: two RGB panels of a CT's largest slices, at most a few MiB


def evaluate_dataset(paths: DatasetPaths, output: Path, backbone: torch.nn.Module, info: BackboneInfo, *,
                     real: list[Path] | None = None, feature_size: int = DEFAULT_FEATURE_SIZE, device: str = "cpu",
                     previews: int = 4, soft_tissue_hu: tuple[float, float] = SOFT_TISSUE_HU) -> dict:
    """Paired metrics of every case, FID/MMD of real vs synthetic, preview PNGs; writes report.json and report.md.

    The PNGs and both reports are written together at the end: an interrupted evaluation leaves none of them.
    A damaged or missing case (an unreadable or missing file, its reference gone) is left out of every metric and
    listed in report["damaged"] with the reason; the caller decides whether that is an error.
    """
    check_feature_size(feature_size)
    records = read_provenance(paths, finished_only=False)
    if not records:
        raise InputError(f"{paths.root} holds no finished cases (provenance/*.json); give a folder made by lungddpm generate")
    gone = [str(p) for p in real or () if not Path(p).exists()]
    if gone:
        raise InputError(f"the real set's images {gone[:3]} do not exist; fix the --real list")
    check_output_folder(output, protect=(paths.root,), needed_bytes=REPORT_BYTES + previews * PREVIEW_BYTES)
    rows, panels, evaluated, damaged, nodules = [], {}, [], [], []
    variety = VarietyGroups()
    references: dict[str, Volume] = {}  # the last reference read (see case_volumes)
    for record in records:
        try:
            synthetic, reference, layout = case_volumes(paths, record, references)
            metrics = paired_metrics(synthetic, reference, layout, soft_tissue_hu=soft_tissue_hu)
            requested = _requested(record, layout)
        except InputError as error:
            damaged.append({"case": record["case"], "reason": str(error)})
            continue
        evaluated.append(record)
        w = record.get("guidance")
        for row in nodule_measurements(synthetic, layout, reference):
            asked = requested.get(row["component"])
            nodules.append({"case": record["case"], "guidance": w, **row,
                            "requested": asked.to_dict() if asked is not None else None})
        variety.add(record["reference_id"], w, synthetic.array, layout.array)
        rows.append({"case": record["case"], "reference_id": record["reference_id"], **metrics})
        if len(panels) < previews:
            panels[f"{record['case']}.png"] = slice_panels([reference, synthetic], layout, focus_label=NODULE)
    real_paths = real or sorted({Path(r["reference_path"]) for r in evaluated})
    synthetic_paths = [paths.root / r["image"] for r in evaluated]
    distribution = distribution_metrics((read_volume(p) for p in real_paths), (read_volume(p) for p in synthetic_paths),
                                        backbone, info, size=feature_size, device=device)
    distribution["real_set"] = "given list" if real else "the references of the data set"
    report = {
        "dataset": paths.root.name, "lungddpm_version": __version__, "cases": len(rows),
        "models": sorted({f"{r['model']} sha256 {r['model_sha256']}" for r in evaluated}),
        "samplers": sorted({f"{r['sampler']} {r['steps']} steps" for r in evaluated}),
        "settings": {"mse_region": "layout >= 1 (lung and nodules)", "mse_model_window_hu": list(NATIVE_HU_WINDOW),
                     "soft_tissue_hu": list(soft_tissue_hu), "blob_margin_mm": BLOB_MARGIN_MM,
                     "blob_min_volume_mm3": BLOB_MIN_VOLUME_MM3},
        "paired": {"summary": summarize([{k: r[k] for k in PAIRED_COLUMNS} for r in rows]), "cases": rows},
        "distribution": distribution, "previews": list(panels), "damaged": damaged,
        "nodules": {"cases": nodules, "agreement": _by_guidance(nodules, agreement)},
        "variety": _variety_summary(variety.finish()),
    }
    with outputs_together():
        for name, rgb in panels.items():
            write_png(rgb, output / name)
        write_text(output / "report.json", json.dumps(_json_safe(report), indent=2) + "\n")
        write_text(output / "report.md", markdown(report))
    return report


def _requested(record: dict, layout: Volume) -> dict[int, NoduleAttributes]:
    """The attributes the case's provenance says were asked of each layout nodule (matched by centre), by component."""
    entries = record.get("nodule_attributes") or []
    try:
        records = [NoduleRecord(int(e["component"]), tuple(e["center_lps_mm"]), NoduleAttributes.from_dict(e["attributes"]))
                   for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"its provenance's nodule_attributes are malformed ({exc}); run lungddpm generate again") from None
    return match_records(layout, records)


def _by_guidance(nodules: list[dict], summary: Callable[[list[dict]], dict]) -> dict:
    """summary(nodules of one guidance scale) per w ('default' for cases made without attributes)."""
    scales = sorted({n["guidance"] for n in nodules}, key=lambda w: (w is None, w or 0.0))
    return {_w_name(w): summary([n for n in nodules if n["guidance"] == w]) for w in scales}


def _w_name(w: float | None) -> str:
    """A guidance scale as a report key: 'w=3', or 'no guidance' for a model without attributes."""
    return "no guidance" if w is None else f"w={w:g}"


def _variety_summary(groups: list[dict]) -> dict:
    """The variety of each reference's variants and, per guidance scale, its mean over references."""
    rows = [{"reference_id": g["reference_id"], "guidance": g["key"], "variants": g["variants"],
             "mean_abs_diff_hu": g["mean_abs_diff_hu"]} for g in groups]
    by_w = {}
    for w in sorted({r["guidance"] for r in rows}, key=lambda w: (w is None, w or 0.0)):
        values = [r["mean_abs_diff_hu"] for r in rows if r["guidance"] == w]
        by_w[_w_name(w)] = {"mean_abs_diff_hu": float(sum(values) / len(values)), "references": len(values)}
    return {"region": "voxels both variants' layouts label >= 1 (lung and nodules)", "references": rows, "by_guidance": by_w}


def _json_safe(value: object) -> object:
    """NaN and infinities as null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: object) -> str:
    """A number for a table: 4 significant digits, '—' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _damaged_section(damaged: list[dict]) -> list[str]:
    """The Markdown lines naming the cases left out, with their reasons (none when every case was evaluated)."""
    if not damaged:
        return []
    return [f"## Damaged or missing cases: {len(damaged)}, left out of every metric", "", "| case | reason |", "|---|---|",
            *[f"| {d['case']} | {d['reason'].replace('|', '/')} |" for d in damaged], ""]


NODULE_COLUMNS = ("mean_hu", "solid_fraction", "calcified_fraction", "edge_sharpness_hu_per_mm", "irregularity",
                  "elongation", "diameter_mm")


def _attribute_sections(report: dict) -> list[str]:
    """Markdown: per nodule its request and measurements, agreement per attribute and w, variety per w."""
    nodules, variety = report["nodules"], report["variety"]
    if not nodules["cases"]:
        return []
    lines = ["## Nodules: requested attributes and image measurements", "",
             "Measured on the synthetic CT per layout nodule (evaluation/adherence.py): mean HU, solid fraction "
             "(> −300 HU), calcified fraction (> 200 HU), edge sharpness (mean |∇HU| across the layout border, HU/mm), "
             "irregularity (1 − roundness) and elongation (principal-axis ratio) and equivalent diameter (mm) of the "
             "> −400 HU region.", "",
             "| case | nodule | w | requested | " + " | ".join(NODULE_COLUMNS) + " |", "|---" * (len(NODULE_COLUMNS) + 4) + "|"]
    for n in nodules["cases"]:
        asked = ", ".join(f"{k} {v:g}" for k, v in (n["requested"] or {}).items() if k != "diameter_mm") or "—"
        lines.append(f"| {n['case']} | {n['component']} | {_fmt(n['guidance'])} | {asked} | "
                     + " | ".join(_fmt(n[k]) for k in NODULE_COLUMNS) + " |")
    lines += ["", "### Agreement (requested vs measured)", "",
              "| w | attribute | measure | n | Spearman ρ | expected sign | mean measure per requested value |",
              "|---|---|---|---|---|---|---|"]
    for w, table in nodules["agreement"].items():
        for attribute, measures in table.items():
            if attribute == "calcification":
                continue
            for measure, a in measures.items():
                means = ("; ".join(f"{v}: {_fmt(m['mean'])} (n {m['n']})" for v, m in a["mean_by_requested"].items())
                         if "mean_by_requested" in a else f"mean abs error {_fmt(a['mean_abs_error_mm'])} mm")
                lines.append(f"| {w} | {attribute} | {measure} | {a['n']} | {_fmt(a['spearman_rho'])} | "
                             f"{a['expected_sign']:+d} | {means} |")
        if "calcification" in table:
            c = table["calcification"]
            cells = "; ".join(f"{asked} → {', '.join(f'{m} {k}' for m, k in row.items())}" for asked, row in c["confusion"].items())
            lines.append(f"| {w} | calcification | calcified fraction ≥ 0.02 | {c['n']} | accuracy {_fmt(c['accuracy'])} | | {cells} |")
    lines += [""]
    if variety["references"]:
        lines += ["## Variety among the variants of each reference", "",
                  f"Mean over pairs of variants of the mean |ΔHU| over {variety['region']}.", "",
                  "| w | references | mean abs ΔHU (HU) |", "|---|---|---|",
                  *[f"| {w} | {v['references']} | {_fmt(v['mean_abs_diff_hu'])} |" for w, v in variety["by_guidance"].items()], ""]
    return lines


def markdown(report: dict) -> str:
    """The report as a Markdown page: provenance, summary and per-case tables, distribution metrics, images."""
    s = report["settings"]
    d = report["distribution"]
    lines = [
        f"# Fidelity report: {report['dataset']} (SYNTHETIC data)", "",
        f"{report['cases']} synthetic cases; lungddpm {report['lungddpm_version']}; model(s): {', '.join(report['models'])}; "
        f"sampler(s): {', '.join(report['samplers'])}.", "",
        *_damaged_section(report["damaged"]),
        "## Paired metrics (synthetic vs its reference)", "",
        f"- MSE over the lung region ({s['mse_region']}), in model space (HU window {s['mse_model_window_hu']} → [−1, 1]) and in HU².",
        "- Seam score: mean |∇HU| across the lung border, synthetic over reference (1 = no seam).",
        f"- Nodule adherence: fraction of nodule-layout voxels in {s['soft_tissue_hu']} HU.",
        f"- Spurious blobs: soft-tissue components in the lung, farther than {s['blob_margin_mm']} mm from layout nodules, "
        f"≥ {s['blob_min_volume_mm3']} mm³, not soft tissue in the reference.", "",
        "| metric | mean | std | n |", "|---|---|---|---|",
        *[f"| {k} | {_fmt(v['mean'])} | {_fmt(v['std'])} | {v['n']} |" for k, v in report["paired"]["summary"].items()], "",
        "| case | " + " | ".join(PAIRED_COLUMNS) + " |", "|---" * (len(PAIRED_COLUMNS) + 1) + "|",
        *["| " + " | ".join([r["case"], *(_fmt(r[k]) for k in PAIRED_COLUMNS)]) + " |" for r in report["paired"]["cases"]], "",
        "## Distribution metrics (real vs synthetic)", "",
        f"Backbone: {d['backbone']}; volumes resized to {d['feature_size']}³, HU clipped to {list(NATIVE_HU_WINDOW)}, z-scored.",
        f"Real set: {d['real_set']} ({d['n_real']} volumes); synthetic set: {d['n_synthetic']} volumes.", "",
    ]
    if "fid" in d:
        lines += ["| metric | value |", "|---|---|", f"| FID | {_fmt(d['fid'])} |", f"| MMD² (RBF, median bandwidth) | {_fmt(d['mmd_rbf'])} |",
                  f"| MMD² (polynomial, KID) | {_fmt(d['mmd_polynomial'])} |", ""]
    else:
        lines += [d["note"], ""]
    lines += _attribute_sections(report)
    if report["previews"]:
        lines += ["## Slices (left: reference, right: synthetic; red: layout nodules)", ""]
        lines += [f"![{name}]({name})" for name in report["previews"]] + [""]
    return "\n".join(lines)
