"""Batch generation of an augmentation data set: K synthetic variants of each reference CT, sharded over ranks.

Inputs are reference CTs with layouts, or CTs alone plus a nodule specification (count, diameter
range, kinds: their texture, which attribute models follow; or ``--attributes-from`` a distribution,
``generation.attribute_source``): then the lung mask is computed
(``lung_mask``) and nodules are placed at random (``random_nodules``) with each variant's own seed. Each rank makes its share of the work list
(``jobs``), skips cases already on disk (resume), writes each case atomically (``datasets_out``)
and, when every case exists, rebuilds the data-set files (nnU-Net ``dataset.json``, MONAI
datalist, manifest).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lungddpm import __version__
from lungddpm.model.checkpoints import checkpoint_solver_steps, file_sha256, load_model
from lungddpm.generation.attribute_source import AttributeSource, check_source_for_model
from lungddpm.generation.export import LABEL_SETS, DatasetPaths, finalize, write_case
from lungddpm.errors import CheckpointError, ConfigError, InputError
from lungddpm.generation.shards import Shard, WorkItem, safe_id, shard_device, shard_items, work_items
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.nodules import random_nodules
from lungddpm.layout.sidecar import NoduleRecord, kind_records, layout_records, nodule_components
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.interrupt import NOTHING_WRITTEN, leaves
from lungddpm.runtime.progress import BatchProgress
from lungddpm.sampling.options import ANCESTRAL, DEFAULT_SAMPLER, GENERATE_SOLVER_STEPS, check_sampler, default_steps
from lungddpm.model.fastpath import auto_batch
from lungddpm.synthesis.synthesize import Variant, is_guided, synthesize_variants
from lungddpm.io.atomic import is_temporary
from lungddpm.io.outputs import check_output_folder, image_bytes
from lungddpm.io.volume import READABLE_SUFFIXES, Volume, read_volume

LAYOUT_SUFFIX = "_layout"  # in a folder of references, <id>_layout.<ext> is the layout of <id>.<ext>


@dataclass(frozen=True)
class Reference:
    """One reference CT (file or DICOM folder), its id, and its layout file if it has one."""

    id: str
    image: Path
    layout: Path | None = None


DEFAULT_KINDS = ("solid",)  # what a model without attributes is taken to draw


@dataclass(frozen=True)
class NoduleRequest:
    """Random nodules to add to every case: count, diameter range in mm, kinds."""

    count: int
    diameter_range_mm: tuple[float, float] = (6.0, 20.0)
    kinds: tuple[str, ...] = DEFAULT_KINDS  # textures for attribute models (layout.nodules.KIND_TEXTURE)

    def as_dict(self) -> dict:
        """Plain-JSON form for provenance."""
        return {"count": self.count, "diameter_range_mm": list(self.diameter_range_mm), "kinds": list(self.kinds)}


@dataclass(frozen=True)
class GenerateSettings:
    """What to make: variants per reference, base seed, sampler and steps, label set, device, nodules, attributes, batch."""

    variants: int = 1
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    aas_variant: str = "paper"
    label_set: str = "layout"
    device: str = "auto"
    nodules: NoduleRequest | None = None
    guidance: float | None = None  # classifier-free guidance w of an attribute model (None: the model's)
    attributes_from: AttributeSource | None = None  # each nodule's attributes drawn from this (attribute models)
    batch: int | None = None  # variants of one reference per network pass (None: model.fastpath.auto_batch)

    def requested_steps(self, model_steps: int | None) -> int | None:
        """The steps asked of synthesize: as given for ddpm (None = the model's T), else given, the model file's own
        (``model_steps``: its solver_steps) or GENERATE_SOLVER_STEPS."""
        return self.steps if self.sampler == ANCESTRAL else int(self.steps or default_steps(model_steps, GENERATE_SOLVER_STEPS))


def _image_stem(path: Path) -> str:
    """A file name without its image extension (.nii.gz counted as one)."""
    name = path.name
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_references(source: str | Path) -> list[Reference]:
    """References from a folder (<id>.<ext> with optional <id>_layout.<ext>), a CSV or a JSON list.

    CSV columns / JSON keys: ``image`` (required), ``id`` and ``layout`` (optional); relative paths
    are relative to the list file. JSON is a list of such objects or {"references": [...]}.
    """
    source = Path(source)
    if source.is_dir():
        return _references_in_folder(source)
    if not source.is_file():
        raise InputError(f"{source}: no such folder or file; give a folder of CTs, or a .csv or .json list of them")
    suffix = source.suffix.lower()
    if suffix == ".csv":
        with open(source, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".json":
        data = json.loads(source.read_text(encoding="utf-8"))
        rows = data.get("references", []) if isinstance(data, dict) else data
    else:
        raise InputError(f"{source}: a reference list must be .csv or .json (columns image, id, layout), or a folder")
    return [_reference_from_row(row, source, n) for n, row in enumerate(rows, start=1)]


def _reference_from_row(row: dict, source: Path, n: int) -> Reference:
    """One list row as a Reference (paths relative to the list's folder)."""
    if not isinstance(row, dict) or not row.get("image"):
        raise InputError(f"{source}: entry {n} has no 'image'; every entry needs the path of a reference CT")
    image = source.parent / row["image"]
    layout = source.parent / row["layout"] if row.get("layout") else None
    return Reference(safe_id(row.get("id") or _image_stem(image)), image, layout)


def _references_in_folder(folder: Path) -> list[Reference]:
    """Every image file in a folder except layouts, paired with <id>_layout.<ext> where present."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not is_temporary(p)
             and any(p.name.lower().endswith(s) for s in READABLE_SUFFIXES)]
    layouts = {_image_stem(p)[: -len(LAYOUT_SUFFIX)]: p for p in files if _image_stem(p).endswith(LAYOUT_SUFFIX)}
    refs = [Reference(safe_id(_image_stem(p)), p, layouts.get(_image_stem(p))) for p in files
            if not _image_stem(p).endswith(LAYOUT_SUFFIX)]
    if not refs:
        raise InputError(f"{folder}: no CT files ({', '.join(READABLE_SUFFIXES)}) found; give a folder of reference CTs")
    return refs


def check_settings(refs: list[Reference], settings: GenerateSettings) -> None:
    """Refuse inconsistent settings before any work: unknown sampler or label set, batch < 1, references without a layout."""
    check_sampler(settings.sampler)
    if settings.batch is not None and settings.batch < 1:
        raise ConfigError(f"batch {settings.batch} (--batch) must be at least 1 variant per network pass")
    if settings.label_set not in LABEL_SETS:
        raise ConfigError(f"label set {settings.label_set!r} is unknown; choose one of {sorted(LABEL_SETS)}")
    if settings.nodules is None:
        missing = [r.id for r in refs if r.layout is None]
        if missing:
            raise ConfigError(f"references {missing[:5]} have no layout; give each a layout, or ask for random "
                              "nodules (--nodules N) so the lung mask is computed and nodules are placed")
    kinds = settings.nodules.kinds if settings.nodules else DEFAULT_KINDS
    if settings.attributes_from is not None and tuple(kinds) != DEFAULT_KINDS:
        raise ConfigError(f"--kinds {' '.join(kinds)} and --attributes-from both set the nodules' attributes; give one "
                          "(a mix such as 'texture=ground-glass:0.5,solid:0.5' says what --kinds says)")


def check_model_settings(model: LungDDPM, settings: GenerateSettings) -> None:
    """Refuse attribute settings the model cannot honour (no attributes, unknown ones, --kinds), before any case."""
    name = Path(model.source.path).name if model.source else "in memory"
    kinds = settings.nodules.kinds if settings.nodules else DEFAULT_KINDS
    if settings.attributes_from is not None:
        check_source_for_model(settings.attributes_from, model.config.attributes, name)
    if not model.config.attributes and tuple(kinds) != DEFAULT_KINDS:
        raise ConfigError(f"model {name} takes no nodule attributes, so --kinds {' '.join(kinds)} cannot be honoured; "
                          "leave --kinds out or use an attribute model such as demo-nodules")
    if not model.config.attributes and settings.guidance is not None:
        raise ConfigError(f"model {name} takes no nodule attributes, so --guidance has nothing to guide; leave it out "
                          "or use an attribute model such as demo-nodules")


class _CaseMaker:
    """Makes the cases of one rank, reading each reference once and computing each lung mask once."""

    def __init__(self, refs: dict[str, Reference], settings: GenerateSettings) -> None:
        self.refs = refs
        self.settings = settings
        self._cached: tuple[str, Volume, Volume] | None = None  # (id, reference, base layout) of the last reference

    def inputs(self, item: WorkItem) -> tuple[Volume, Volume, dict, str, list[NoduleRecord]]:
        """The reference, the case's layout, how the layout was made, its name for messages, and its own nodules' records.

        With --attributes-from, the source's draws (the case seed's own stream) go first to the layout's own nodules
        in component order (the records returned), then to the random nodules in the order they are placed, whose
        outlines follow them (``layout.nodules``: sphericity, spiculation, lobulation) and whose specs carry them.
        """
        ref = self.refs[item.reference_id]
        if self._cached is None or self._cached[0] != ref.id:
            image = read_volume(ref.image)
            self._cached = (ref.id, image, read_volume(ref.layout) if ref.layout else lung_mask(image))
        _, image, base = self._cached
        req = self.settings.nodules
        source = "file" if ref.layout else "lung_mask"
        info: dict = {"layout_source": source, "layout_path": str(ref.layout) if ref.layout else None, "nodules": []}
        layout_name = str(ref.layout) if ref.layout else f"the automatic lung mask of {ref.image}"
        adds = req.count if req is not None else 0
        for_random, own = None, []  # the source's draws for the random nodules, the layout's own nodules' records
        if self.settings.attributes_from is not None:
            existing = nodule_components(base)[1]
            drawn = self.settings.attributes_from.draw(item.seed, existing + adds)
            own, for_random = layout_records(base, dict(enumerate(drawn[:existing], start=1))), drawn[existing:]
        if adds > 0:
            try:
                base, specs = random_nodules(base, req.count, req.diameter_range_mm, kinds=req.kinds, seed=item.seed,
                                             attributes=for_random)
            except InputError as exc:
                raise InputError(f"{item.case}: {exc}") from None
            for spec, attributes in zip(specs, for_random or []):
                spec["attributes"] = attributes.to_dict()
                del spec["kind"]  # the source sets the attributes (--kinds is refused with it)
            info["layout_source"] = source + "+random_nodules"
            info["nodules"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()} for s in specs]
        return image, base, info, layout_name, own


def _record(item: WorkItem, ref: Reference, paths: DatasetPaths, settings: GenerateSettings, info: dict,
            metadata: dict[str, str], shard: Shard, requested: list[NoduleRecord] | None) -> dict:
    """The provenance record of one case (with the attributes requested per nodule, for attribute models)."""
    return {
        "case": item.case, "synthetic": True, "reference_id": ref.id, "reference_path": str(ref.image.resolve()),
        **info, "nodule_request": settings.nodules.as_dict() if settings.nodules else None,
        "attributes_from": settings.attributes_from.as_dict() if settings.attributes_from else None,
        "nodule_attributes": [r.to_dict() for r in requested] if requested is not None else None,
        "attribute_schema": metadata.get("attribute_schema"),
        "guidance": float(metadata["guidance"]) if "guidance" in metadata else None,
        "variant": item.variant, "seed": item.seed, "label_set": settings.label_set,
        "model": metadata["model"], "model_sha256": metadata["model_sha256"], "model_weights": metadata["model_weights"],
        "profile": metadata["profile"], "sampler": metadata["sampler"], "steps": int(metadata["steps"]),
        "aas_variant": metadata["aas_variant"], "device": metadata["device"], "lungddpm_version": __version__,
        "precision": metadata["precision"], "attention": metadata["attention"], "memory_layout": metadata["memory_layout"],
        "sampling_seconds": float(metadata["sampling_seconds"]), "batch": int(metadata["batch"]),
        "batch_rule": metadata["batch_rule"], "batch_cases": int(metadata["batch_cases"]),
        "rank": shard.rank, "world_size": shard.world_size,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image": str(paths.image(item.case).relative_to(paths.root)),
        "label": str(paths.label(item.case).relative_to(paths.root)),
        "layout_file": str(paths.layout(item.case).relative_to(paths.root)) if settings.label_set != "layout" else None,
    }


def _check_resumable(paths: DatasetPaths, item: WorkItem, want: dict) -> None:
    """Refuse to skip a finished case that was made with other settings (seed, model, sampler, ...)."""
    have = json.loads(paths.provenance(item.case).read_text(encoding="utf-8"))
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        details = ", ".join(f"{k} {have.get(k)!r} on disk vs {want[k]!r} now" for k in differ)
        raise ConfigError(f"{paths.root}: case {item.case} was made with other settings ({details}); "
                          "write to a new output folder, or delete that folder's cases to remake them")


def _wanted(item: WorkItem, ref: Reference, settings: GenerateSettings, model_sha256: str, model_steps: int | None) -> dict:
    """The provenance values a finished case must have to be reused for this request."""
    adds = settings.nodules is not None and settings.nodules.count > 0
    want = {"seed": item.seed, "model_sha256": model_sha256, "sampler": settings.sampler,
            "aas_variant": settings.aas_variant, "label_set": settings.label_set,
            "layout_source": ("file" if ref.layout else "lung_mask") + ("+random_nodules" if adds else ""),
            "nodule_request": settings.nodules.as_dict() if settings.nodules else None,
            "attributes_from": settings.attributes_from.as_dict() if settings.attributes_from else None}
    if settings.guidance is not None:
        want["guidance"] = settings.guidance
    if settings.sampler != ANCESTRAL:  # ddpm runs the model's T steps, known once the model is loaded
        want["steps"] = settings.requested_steps(model_steps)
    return want


def _planned_bytes(items: list[WorkItem], refs: dict[str, Reference], settings: GenerateSettings) -> int:
    """The most bytes the cases will write: per case its image in the reference's pixel type, and uint8 labels
    (and layout), each at most the image's size."""
    files_per_case = 2 if settings.label_set == "layout" else 3
    sizes = {ref_id: image_bytes(refs[ref_id].image) for ref_id in {item.reference_id for item in items}}
    return sum(files_per_case * sizes[item.reference_id] for item in items)


def generate(refs: list[Reference], model_path: str | Path, paths: DatasetPaths, settings: GenerateSettings,
             shard: Shard, *, progress: str = "bar") -> dict:
    """Make this rank's share of the cases (skipping finished ones); finalize the data set when all exist."""
    check_settings(refs, settings)
    by_id = {r.id: r for r in refs}
    if len(by_id) != len(refs):
        raise ConfigError("two references map to the same id; give them distinct ids (CSV/JSON column 'id')")
    items = work_items(list(by_id), settings.variants, settings.seed)
    mine = shard_items(items, shard)
    protect = tuple(p for r in refs for p in (r.image, r.layout) if p) + (Path(model_path),)
    if not Path(model_path).is_file():
        raise CheckpointError(f"model {model_path} does not exist or is not a file; give a checkpoint path or 'demo'")
    todo = [item for item in mine if not paths.is_done(item.case)]
    check_output_folder(paths.root, protect=protect, needed_bytes=_planned_bytes(todo, by_id, settings))
    model_sha256 = file_sha256(model_path)
    maker = _CaseMaker(by_id, settings)
    report = BatchProgress(progress, shard.rank, shard.world_size)
    model = load_model(model_path, device=shard_device(settings.device, shard)) if todo else None
    if model is not None:
        check_model_settings(model, settings)
    default_asked = settings.sampler != ANCESTRAL and settings.steps is None  # only then do the model's own steps count
    model_steps = model.config.solver_steps if model is not None else (
        checkpoint_solver_steps(model_path) if default_asked else None)  # a finished data set: read the file once
    per_call = settings.batch or (auto_batch(model.config, model.device, len(todo), is_guided(model.config, settings.guidance))
                                  if model is not None else 1)
    made = skipped = n = 0
    leaves(_kept(paths, sum(paths.is_done(i.case) for i in items), len(items)))
    for chunk in _chunks(mine, paths.is_done, per_call):
        ref = by_id[chunk[0].reference_id]
        fresh = not paths.is_done(chunk[0].case)
        if fresh:
            _make_cases(chunk, ref, maker, model, paths, settings, shard, protect)
            made += len(chunk)
        else:
            _check_resumable(paths, chunk[0], _wanted(chunk[0], ref, settings, model_sha256, model_steps))
            skipped += 1
        done_total = sum(paths.is_done(i.case) for i in items)
        leaves(_kept(paths, done_total, len(items)))
        for item in chunk:
            n += 1
            report.case_done(item.case, n, len(mine), done_total, len(items), made=fresh)
    complete = all(paths.is_done(i.case) for i in items)
    summary = {"rank": shard.rank, "world_size": shard.world_size, "shard_cases": len(mine), "made": made,
               "skipped": skipped, "total_cases": len(items), "complete": complete, "dataset": str(paths.root)}
    if complete:
        summary["finalized"] = finalize(paths)
        shutil.rmtree(paths.staging, ignore_errors=True)  # what killed runs left; no rank writes cases any more
    return summary


def _chunks(items: list[WorkItem], is_done: Callable[[str], bool], size: int) -> Iterator[list[WorkItem]]:
    """Consecutive items of one reference sampled together: up to `size` unfinished ones, or one finished one (skipped)."""
    chunk: list[WorkItem] = []
    for item in items:
        done = is_done(item.case)
        if chunk and (done or chunk[0].reference_id != item.reference_id or len(chunk) == size):
            yield chunk
            chunk = []
        if done:
            yield [item]
        else:
            chunk.append(item)
    if chunk:
        yield chunk


def _make_cases(chunk: list[WorkItem], ref: Reference, maker: _CaseMaker, model: LungDDPM, paths: DatasetPaths,
                settings: GenerateSettings, shard: Shard, protect: tuple[Path, ...]) -> None:
    """Synthesise the variants of one reference in `chunk` together (``synthesize_variants``) and write each case."""
    inputs = [maker.inputs(item) for item in chunk]
    requested = [_requested_records(model, layout, info["nodules"], own) for _, layout, info, _, own in inputs]
    variants = [Variant(layout, item.seed, wanted or None, layout_name)
                for item, (_, layout, _, layout_name, _), wanted in zip(chunk, inputs, requested)]
    results = synthesize_variants(inputs[0][0], variants, model, sampler=settings.sampler,
                                  steps=settings.requested_steps(model.config.solver_steps),
                                  device=str(model.device), variant=settings.aas_variant, reference_name=str(ref.image),
                                  guidance=settings.guidance, batch=settings.batch)
    for item, (_, layout, info, _, _), wanted, result in zip(chunk, inputs, requested, results):
        record = _record(item, ref, paths, settings, info, result.metadata, shard, wanted)
        result.metadata["case"] = item.case
        write_case(paths, item.case, result.image, layout, settings.label_set, record, result.metadata, protect)


def _requested_records(model: LungDDPM, layout: Volume, specs: list[dict],
                       own: list[NoduleRecord]) -> list[NoduleRecord] | None:
    """The attributes asked of each nodule of an attribute model's case (None for a model without attributes).

    The layout's own nodules' records (drawn from --attributes-from) and the random nodules' specs: their drawn
    attributes, or their kinds as texture (``layout.sidecar.kind_records``, as add-nodule records them).
    """
    if not model.config.attributes:
        return None
    return kind_records(layout, specs, own) if specs or own else []


def _kept(paths: DatasetPaths, done: int, total: int) -> str:
    """What an interruption leaves: the finished cases, which a rerun of the same command skips."""
    if not done:
        return NOTHING_WRITTEN
    return f"kept {done} finished case(s) of {total} in {paths.root}; run the same command again to make the rest"
