"""The `lungddpm` command line: one sub-command per job; user errors print without a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lungddpm import __version__
from lungddpm.cli_checks import (COUNT, MILLIMETRES, POSITIVE, SEED, SEED_HELP, CheckingParser, OneLineParser, OrderedPair,
                                 internal_error, number, user_error, whole_number)
from lungddpm.errors import ConfigError, InputError, LungDDPMError
from lungddpm.generation.export import LABEL_SETS
from lungddpm.layout.nodules import NODULE_KINDS, RANDOM_DIAMETERS_MM
from lungddpm.layout.segmentation import DEFAULT_EXCLUDED, DEFAULT_LUNG, DEFAULT_NODULES, LOBES, TOTALSEGMENTATOR_LABELS
from lungddpm.model.config import NATIVE_PATCH_PROFILE, NATIVE_PROFILE, PROFILE_NAMES, PATCH_PROFILE, PATCH_PROFILES
from lungddpm.runtime.precision import AUTO, PRECISION_CHOICES
from lungddpm.runtime.interrupt import exits_cleanly
from lungddpm.runtime.progress import PROGRESS_MODES
from lungddpm.sampling.options import DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS, GENERATE_SOLVER_STEPS, SAMPLERS, VARIANTS

DEMO_MODEL_NAME = "demo"  # the word that names the bundled demo model wherever a checkpoint is asked for
DEMO_NODULES_NAME = "demo-nodules"  # the bundled attribute (nodule) demo model


def _model_path(value: str) -> Path:
    """A checkpoint path; the words 'demo' and 'demo-nodules' name the bundled demo models."""
    if value not in (DEMO_MODEL_NAME, DEMO_NODULES_NAME):
        return Path(value)
    from lungddpm.demo.demo import DEMO_MODEL, DEMO_NODULES_MODEL

    return DEMO_MODEL if value == DEMO_MODEL_NAME else DEMO_NODULES_MODEL


def _cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's format, SHA-256, step and configuration as JSON."""
    from lungddpm.model.checkpoints import load_model

    model = load_model(_model_path(args.checkpoint), device="cpu")
    n_params = sum(p.numel() for p in model.denoise_fn.parameters())
    print(json.dumps({"source": vars(model.source), "parameters": n_params, "config": model.config.to_dict()}, indent=2))
    return 0


def _cmd_synthesize(args: argparse.Namespace, models=None) -> int:
    """Synthesise a CT from a reference CT and a layout (or lung + nodule masks) and write it with its labels.

    models: a synthesis.model_cache.ModelCache that keeps loaded models between calls (`lungddpm worker`).
    """
    if args.nodule_mask and not args.lung_mask:
        raise ConfigError("--nodule-mask goes with --lung-mask; with --layout, nodules are label 2 of the layout")
    from lungddpm.io.outputs import check_output_file
    from lungddpm.io.volume import read_volume
    from lungddpm.runtime.progress import Progress
    from lungddpm.synthesis.synthesize import output_bytes, planned_outputs, synthesize, write_result

    _set_threads(args.threads)
    model = _model_path(args.model)
    sources = [p for p in (args.layout, args.lung_mask, args.nodule_mask) if p]
    protect = (args.reference, *sources, model)
    reference = read_volume(args.reference)
    if args.layout:
        layout, layout_name = read_volume(args.layout), args.layout
    else:
        layout, layout_name = _layout_from_masks(args.lung_mask, args.nodule_mask)
    for target in planned_outputs(args.output):  # refuse before hours of sampling, not after
        check_output_file(target, protect=protect, needed_bytes=output_bytes(reference))
    attributes, source = _nodule_request(args)
    if source and attributes is None:  # a sidecar next to the layout: used when the model takes attributes
        model, attributes, source = _with_layout_sidecar(model, source)
    if models is not None and isinstance(model, Path):
        model = models.get(model, args.device)
    result = synthesize(reference, layout, model, seed=args.seed, sampler=args.sampler, steps=args.steps,
                        device=args.device, progress=Progress(args.progress), variant=args.variant,
                        precision=args.precision, patch_spacing_mm=args.patch_spacing, attributes=attributes,
                        guidance=args.guidance, reference_name=args.reference, layout_name=layout_name)
    if args.nodule_mask:  # provenance names files, without their folders
        result.metadata["layout"] = f"{Path(args.lung_mask).name} + {Path(args.nodule_mask).name}"
    if source:
        result.metadata["nodule_attributes_from"] = source
    image_path, labels_path = write_result(result, args.output, protect=protect)
    _report(args.progress, {"event": "done", "image": str(image_path), "labels": str(labels_path),
                            **({"nodule_attributes_from": source} if source else {})})
    return 0


def _nodule_request(args: argparse.Namespace):
    """The nodule attributes asked for (--nodule, --prompt, --nodules-json) and where they come from.

    Without them, a sidecar next to --layout (<stem>.nodules.json) is named as the source, attributes None.
    """
    from lungddpm.layout.attributes import parse_assignments, parse_prompt
    from lungddpm.layout.sidecar import read_sidecar_file, sidecar_path

    if args.nodule or args.prompt:
        request = parse_assignments(args.nodule) if args.nodule else parse_prompt(args.prompt)
        _note_outline(request)
        return request, f"--nodule {args.nodule}" if args.nodule else f"--prompt {args.prompt}"
    if args.nodules_json:
        return read_sidecar_file(args.nodules_json), Path(args.nodules_json).name
    if args.layout and sidecar_path(args.layout).is_file():
        return None, str(sidecar_path(args.layout))
    return None, None


def _note_outline(request) -> None:
    """Say on stderr that shape characteristics in a synthesis request do not redraw the layout's outline."""
    from lungddpm.layout.nodules import SHAPE_FIELDS

    shapes = [name for name in SHAPE_FIELDS if getattr(request, name) is not None]
    if shapes:
        print(f"lungddpm: {', '.join(shapes)} shape{'s' if len(shapes) == 1 else ''} a nodule's outline, which the "
              "layout sets: the model is asked for it inside the layout's nodules as they are; to draw the outline, "
              "place the nodule with add-nodule --nodule/--prompt", file=sys.stderr)


def _with_layout_sidecar(model_path: Path, sidecar: str):
    """(model, records, source) using the layout's sidecar for an attribute model; (path, None, None) otherwise."""
    from lungddpm.layout.sidecar import read_sidecar_file
    from lungddpm.model.checkpoints import load_model

    model = load_model(model_path, device="cpu")
    if not model.config.attributes:
        return model, None, None
    print(f"lungddpm: nodule attributes from {sidecar} (the layout's sidecar)", file=sys.stderr)
    return model, read_sidecar_file(sidecar), Path(sidecar).name


def _layout_from_masks(lung_path: str, nodule_path: str | None):
    """A layout (0/1/2) from a lung mask file and an optional nodule mask file (nonzero = inside), and its name."""
    from lungddpm.layout.labels import compose_layout
    from lungddpm.io.volume import read_volume, require_same_grid

    lung = read_volume(lung_path)
    if nodule_path is None:
        return compose_layout(lung, None), lung_path
    nodules = read_volume(nodule_path)
    require_same_grid(lung, nodules, names=(f"lung mask {lung_path}", f"nodule mask {nodule_path}"))
    return compose_layout(lung, nodules), f"{lung_path} + {nodule_path}"


def _set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (fewer can be faster on a loaded machine)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_lung_mask(args: argparse.Namespace) -> int:
    """Write an automatic lung mask (label 1) of a CT; report each lung, warn when implausible; optional preview."""
    from lungddpm.io.outputs import check_output_file
    from lungddpm.layout.lung_mask import lung_mask
    from lungddpm.io.volume import read_volume, write_volume

    ct = read_volume(args.ct)
    check_output_file(args.output, protect=(args.ct,), needed_bytes=ct.array.size)  # a uint8 mask
    if args.preview:
        check_output_file(args.preview, protect=(args.ct, args.output), suffixes=(".png",))
    mask = lung_mask(ct)
    path = write_volume(mask, args.output, metadata={"descrip": "lung mask made by lungddpm (1 = lung)"}, protect=(args.ct,))
    _print_lung_report(ct, mask, {"output": str(path)}, preview=args.preview, protect=(args.ct, path))
    return 0


def _print_lung_report(ct, lung, record: dict, preview: str | None = None, protect: tuple = ()) -> None:
    """Print a record and the lung report of a 0/1 mask as one JSON line, each warning on stderr; optional preview PNG."""
    from lungddpm.layout.labels import LUNG
    from lungddpm.layout.lung_report import lung_report
    from lungddpm.io.volume import refuse_protected
    from lungddpm.runtime.preview import slice_panels, write_png

    report = lung_report(ct, lung)
    if preview:
        refuse_protected(Path(preview), protect)
        record["preview"] = str(write_png(slice_panels([ct], lung, focus_label=LUNG), preview))
    print(json.dumps({**record, **report.to_dict()}))
    for warning in report.warnings:
        print(f"lungddpm: warning: {warning}", file=sys.stderr)


def _cmd_layout_from_segmentation(args: argparse.Namespace) -> int:
    """Build a 0/1/2 layout from a label map or a folder of masks, check it like any layout, write it and report."""
    from lungddpm.io.outputs import check_output_file
    from lungddpm.layout.labels import NODULE, synthesis_region, validate_labels, validate_layout
    from lungddpm.layout.segmentation import layout_from_segmentation
    from lungddpm.io.volume import read_volume, write_volume

    check_output_file(args.output, protect=tuple(p for p in (args.segmentation, args.reference) if p))
    layout = layout_from_segmentation(args.segmentation, lung=args.lung_labels, nodules=args.nodule_labels,
                                      exclude=args.exclude_labels)
    name = f"layout from {args.segmentation}"
    ct = read_volume(args.reference) if args.reference else None
    if ct is None:
        validate_labels(layout, name)
    else:
        validate_layout(ct, layout, ct_name=f"reference {args.reference}", layout_name=name)
    protect = tuple(p for p in (args.segmentation, args.reference) if p)
    path = write_volume(layout, args.output, metadata={"descrip": "layout (0 background, 1 lung, 2 nodule)"}, protect=protect)
    record = {"output": str(path), "nodule_voxels": int((layout.array == NODULE).sum())}
    region = layout.with_array(synthesis_region(layout).astype("uint8"))
    if ct is None:
        print(json.dumps({**record, "lung_volume_l": round(float(region.array.sum() * _voxel_ml(region)) / 1000, 3)}))
    else:
        _print_lung_report(ct, region, record)
    return 0


def _voxel_ml(volume) -> float:
    """Volume of one voxel in millilitres."""
    sx, sy, sz = volume.spacing
    return sx * sy * sz / 1000


def _cmd_add_nodule(args: argparse.Namespace) -> int:
    """Add a nodule at a point, or random nodules, to a layout and write the new layout."""
    from lungddpm.io.outputs import check_output_file
    from lungddpm.layout.labels import validate_labels
    from lungddpm.layout.nodules import add_nodule, described_shape, random_nodules
    from lungddpm.io.atomic import outputs_together
    from lungddpm.layout.sidecar import kind_records, read_sidecar, sidecar_path, write_sidecar
    from lungddpm.io.volume import read_volume, write_volume

    attributes, diameter = _check_nodule_options(args)
    kinds = args.kinds or [NODULE_KINDS[0]]
    layout = read_volume(args.layout)
    validate_labels(layout, args.layout)
    check_output_file(args.output, protect=(args.layout,), needed_bytes=layout.array.size)  # a uint8 layout
    if args.random:
        layout, specs = random_nodules(layout, args.random, args.diameter_range or RANDOM_DIAMETERS_MM,
                                       kinds=tuple(kinds), seed=args.seed, irregularity=args.irregularity,
                                       attributes=[attributes] * args.random if attributes else None)
    else:
        center = list(args.center)
        if args.ras:
            center = [-center[0], -center[1], center[2]]
        layout = add_nodule(layout, center, diameter, kind=kinds[0], irregularity=args.irregularity, seed=args.seed,
                            require_in_lung=not args.allow_outside_lung, attributes=attributes)
        specs = [{"center_lps_mm": center, "diameter_mm": diameter, "kind": kinds[0],
                  "irregularity": described_shape(attributes, args.irregularity, args.seed)[0]}]
    if attributes:
        for spec in specs:
            spec["attributes"] = attributes.to_dict()
            if attributes.texture is not None:
                del spec["kind"]  # the texture is the attributes'
    earlier = read_sidecar(args.layout) if sidecar_path(args.layout).is_file() else []
    records = kind_records(layout, specs, earlier)  # the attributes (the kinds as texture) for attribute models
    with outputs_together():  # the layout and its sidecar appear together
        path = write_volume(layout, args.output, metadata={"descrip": "layout (0 background, 1 lung, 2 nodule)"},
                            protect=(args.layout,))
        sidecar = write_sidecar(path, records)
    print(json.dumps({"output": str(path), "sidecar": str(sidecar), "nodules": specs}, default=float))
    return 0


def _check_nodule_options(args: argparse.Namespace):
    """(attributes without their diameter, the --center nodule's diameter) of add-nodule; refuses options it would ignore."""
    from dataclasses import replace

    from lungddpm.layout.attributes import parse_assignments, parse_prompt

    attributes = parse_assignments(args.nodule) if args.nodule else parse_prompt(args.prompt) if args.prompt else None
    said = attributes.diameter_mm if attributes else None
    if attributes and attributes.texture is not None and args.kinds:
        raise ConfigError(f"--kinds {' '.join(args.kinds)} and the texture in --nodule/--prompt both set the nodule's "
                          "texture; give one of them")
    if args.random:
        ignored = [flag for flag, value in (("--center", args.center), ("--diameter", args.diameter), ("--ras", args.ras),
                                            ("--allow-outside-lung", args.allow_outside_lung),
                                            ("a diameter in --nodule/--prompt", said)) if value]
        if ignored:
            raise ConfigError(f"--random N places nodules at random inside the lung; {', '.join(ignored)} "
                              f"{'is' if len(ignored) == 1 else 'are'} for one nodule at a point (--center X Y Z "
                              "--diameter MM): give one or the other (sizes of random nodules: --diameter-range)")
        return attributes, None
    if args.diameter is not None and said is not None and abs(args.diameter - said) > 1e-6:
        raise ConfigError(f"--diameter {args.diameter:g} and the {said:g} mm in --nodule/--prompt differ; give one size")
    diameter = args.diameter if args.diameter is not None else said
    if args.center is None or diameter is None:
        raise ConfigError("add-nodule needs --center X Y Z and --diameter MM (or a size in --prompt), or --random N")
    if args.diameter_range is not None:
        raise ConfigError("--diameter-range goes with --random N; with --center give the one nodule's --diameter MM")
    if args.kinds and len(args.kinds) > 1:
        raise ConfigError(f"--center places one nodule: give one --kinds value, not {len(args.kinds)} "
                          "(several kinds go with --random N)")
    return (replace(attributes, diameter_mm=None) if attributes else None), diameter


def _cmd_demo(args: argparse.Namespace) -> int:
    """Phantom -> lung mask + nodules -> synthesis with the bundled model -> files and a PNG."""
    from lungddpm.demo.demo import run_demo

    _set_threads(args.threads)
    summary = run_demo(Path(args.output), seed=args.seed, device=args.device, progress=args.progress)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    """Make K synthetic variants of each reference into an nnU-Net / MONAI data set (this rank's share)."""
    from lungddpm.generation.export import dataset_folder, finalize
    from lungddpm.generation.attribute_source import parse_attribute_source
    from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
    from lungddpm.generation.shards import parse_shard, shard_from_env

    _set_threads(args.threads)
    paths = dataset_folder(args.output, args.dataset_id, args.dataset_name)
    if args.finalize:
        print(json.dumps(finalize(paths)))
        return 0
    shard = parse_shard(args.shard) if args.shard else shard_from_env()
    nodules = NoduleRequest(args.nodules, tuple(args.diameter_range), tuple(args.kinds)) if args.nodules else None
    source = parse_attribute_source(args.attributes_from) if args.attributes_from else None
    settings = GenerateSettings(variants=args.variants, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                aas_variant=args.variant, label_set=args.labels, device=args.device, nodules=nodules,
                                guidance=args.guidance, attributes_from=source, batch=args.batch)
    summary = generate(read_references(args.references), _model_path(args.model), paths, settings, shard, progress=args.progress)
    print(json.dumps({"event": "done", **summary}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Paired and distribution fidelity metrics of a generated data set: report.json, report.md and PNGs."""
    from lungddpm.evaluation.backbones import load_backbone, random_backbone
    from lungddpm.generation.export import DatasetPaths
    from lungddpm.runtime.device import resolve_device
    from lungddpm.generation.generate import read_references
    from lungddpm.evaluation.evaluate import evaluate_dataset

    _set_threads(args.threads)
    if args.backbone_weights:
        backbone, info = load_backbone(args.backbone_weights)
    else:
        backbone, info = random_backbone(args.backbone_depth, args.backbone_shortcut, args.backbone_seed)
    real = [r.image for r in read_references(args.real)] if args.real else None
    output = Path(args.output)
    report = evaluate_dataset(DatasetPaths(Path(args.dataset)), output, backbone, info, real=real,
                              feature_size=args.feature_size, device=str(resolve_device(args.device)),
                              previews=args.previews, soft_tissue_hu=tuple(args.soft_tissue_hu))
    summary = {k: v["mean"] for k, v in report["paired"]["summary"].items()}
    dist = {k: report["distribution"].get(k) for k in ("fid", "mmd_rbf", "mmd_polynomial", "backbone")}
    damaged = report["damaged"]
    variety = {w: v["mean_abs_diff_hu"] for w, v in report["variety"]["by_guidance"].items()}
    print(json.dumps({"report": str(output / "report.md"), "cases": report["cases"], "damaged": len(damaged),
                      "paired_mean": summary, **dist, "nodules": len(report["nodules"]["cases"]),
                      "variety_mean_abs_diff_hu": variety}, default=str))
    if damaged and not args.skip_damaged:
        raise InputError(f"{args.dataset}: {len(damaged)} damaged or missing case(s) left out of {output / 'report.md'}, "
                         f"e.g. {damaged[0]['case']}: {damaged[0]['reason']} -- restore them, or pass --skip-damaged "
                         "to accept the report without them")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train (or fine-tune, or resume) a model on prepared data, in one process or under torchrun."""
    from lungddpm.training.config import build_run_config
    from lungddpm.training.run import run_training

    _set_threads(args.threads)
    config = build_run_config(args.config, args.set or [], data=args.data, output=args.output, steps=args.steps,
                              batch_size=args.batch_size, init=args.init, device=args.device,
                              bf16=True if args.bf16 else None, grad_checkpoint=True if args.grad_checkpoint else None)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    summary = run_training(config, resume=args.resume, progress=args.progress)
    if summary is not None:
        print(json.dumps(summary))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare CT folders with nodule annotations as a training set in a profile's model space."""
    from lungddpm.training.prepare import prepare_dataset

    progress = (lambda r: print(json.dumps(r), flush=True)) if args.progress == "json" else None
    summary = prepare_dataset(args.input, args.output, profile=args.profile, size=args.size,
                              cond_channels=args.cond_channels, val_fraction=args.val_fraction, seed=args.seed,
                              patch_spacing_mm=args.patch_spacing, progress=progress)
    print(json.dumps(summary))
    return 0


JOB_OPTIONS = ("model", "seed", "sampler", "steps", "precision", "variant", "patch_spacing", "nodule", "prompt", "guidance",
               "nodules_json")  # nodules_json: the sidecar document itself (per-nodule attributes), not a file name


def _job_request(options: dict, catalog: dict):
    """A server job's JSON options, checked by the synthesize parser (its messages), as a JobRequest."""
    from lungddpm.server.catalog import offered
    from lungddpm.server.checks import JobRequest

    unknown = sorted(set(options) - set(JOB_OPTIONS))
    if unknown:
        raise ConfigError(f"options {', '.join(map(repr, unknown))}: not job options; give only {', '.join(JOB_OPTIONS)}")
    model = offered(catalog, options.get("model", DEMO_MODEL_NAME))
    argv = ["synthesize", "--reference=-", "--layout=-", "--output=-.nrrd", f"--model={model.name}"]
    argv += [f"--{key.replace('_', '-')}={options[key]}" for key in JOB_OPTIONS[1:-1] if options.get(key) is not None]
    args = build_parser(CheckingParser).parse_args(argv)
    args.layout = None  # no sidecar: a server job's attributes come with its options
    attributes, _ = _nodule_request(args)
    if options.get("nodules_json") is not None:
        if attributes is not None:
            raise ConfigError("options nodule, prompt and nodules_json: give one of them (nodules_json: per nodule)")
        from lungddpm.layout.sidecar import parse_sidecar

        attributes = parse_sidecar(options["nodules_json"], "option nodules_json")
    return JobRequest(model, {"seed": args.seed, "sampler": args.sampler, "steps": args.steps, "variant": args.variant,
                              "precision": args.precision, "patch_spacing_mm": args.patch_spacing,
                              "attributes": attributes, "guidance": args.guidance, "reference_name": "reference",
                              "layout_name": "layout"})


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve synthesis jobs over HTTP until interrupted (see README: running the server on a GPU machine)."""
    try:
        import fastapi  # noqa: F401  (the server's extra)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"lungddpm serve needs the server extra ({error.name} is missing): "
                          'pip install "lungddpm[server]"') from None
    import functools
    import logging

    from lungddpm.server.auth import read_token

    token = read_token(args.token_file)  # before torch is imported: a missing token is said at once
    from lungddpm.runtime.device import resolve_device
    from lungddpm.server.app import ServerConfig, run_server
    from lungddpm.server.catalog import build_catalog

    _set_threads(args.threads)
    catalog = build_catalog(args.models)
    device = str(resolve_device(args.device))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"lungddpm: warning: serving on {args.host} without TLS: anyone who can reach it sees the images; "
              "prefer the default 127.0.0.1 with an SSH tunnel, or a reverse proxy with TLS", file=sys.stderr)
    config = ServerConfig(token=token, work_dir=Path(args.work_dir), catalog=catalog, device=device,
                          max_queue=args.max_queue, max_upload_bytes=int(args.max_upload_mb * 2**20),
                          keep_s=args.keep_hours * 3600, parse_options=functools.partial(_job_request, catalog=catalog))
    run_server(config, args.host, args.port)
    return 0


def _report(mode: str, record: dict) -> None:
    """Print a final record: JSON in json mode, else a readable line."""
    if mode == "json":
        print(json.dumps(record), flush=True)
    else:
        print("wrote " + ", ".join(f"{k} {v}" for k, v in record.items() if k != "event"))


def build_parser(parser_class: type[argparse.ArgumentParser] = OneLineParser) -> argparse.ArgumentParser:
    """The argument parser with every sub-command (parser_class: CheckingParser raises instead of exiting)."""
    parser = parser_class(prog="lungddpm", description="Semantic-layout-guided chest CT synthesis (Lung-DDPM).")
    parser.add_argument("--version", action="version", version=f"lungddpm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a model checkpoint (released or lungddpm format)")
    info.add_argument("checkpoint", help="path of a .pt model file, or 'demo'")
    info.set_defaults(func=_cmd_info)

    syn = sub.add_parser("synthesize", help="synthesise a CT in HU on the reference's grid from a layout")
    syn.add_argument("--reference", required=True, help="reference CT (NRRD, NIfTI, MHA or a DICOM folder), in HU")
    layout_source = syn.add_mutually_exclusive_group(required=True)
    layout_source.add_argument("--layout", help="label image on the reference grid: 0 background, 1 lung, 2 nodule")
    layout_source.add_argument("--lung-mask", help="binary lung mask on the reference grid (instead of --layout)")
    syn.add_argument("--nodule-mask", help="binary nodule mask on the reference grid (with --lung-mask)")
    syn.add_argument("--model", required=True, help="checkpoint (released Lung-DDPM or lungddpm format), or 'demo'")
    syn.add_argument("--output", required=True, help="output image (.nrrd, .nii.gz, .mha); labels go to <stem>_labels")
    syn.add_argument("--seed", type=SEED, default=0, help=SEED_HELP)
    syn.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    syn.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                     help=f"ddim, dpmpp2m, dpmpp3m: few-step solvers (default {DEFAULT_SAMPLER}); ddpm: the released "
                          "ancestral sampler (all T steps)")
    syn.add_argument("--steps", type=POSITIVE, default=None,
                     help=f"network passes per sample (solvers: the model file's own default if it has one, else "
                          f"{DEFAULT_SOLVER_STEPS}; ddpm: always the model's T)")
    syn.add_argument("--precision", default=AUTO, choices=PRECISION_CHOICES,
                     help="network precision: auto (default: the device's fastest measured path, bf16 on CPUs with "
                          "native bf16), fp32, or bf16/fp16 autocast (see README for the measured tolerance)")
    syn.add_argument("--patch-spacing", type=MILLIMETRES, default=None, metavar="MM",
                     help="Lung-DDPM+ models: cube voxel size in mm (default: the model's; released: the CT's own voxels)")
    syn.add_argument("--variant", default=VARIANTS[0], choices=VARIANTS, help="AAS noise level (see README)")
    described = syn.add_mutually_exclusive_group()
    described.add_argument("--nodule", metavar="NAME=VALUE,...",
                           help="attribute models: every nodule's attributes, e.g. 'texture=ground-glass, spiculation=4' "
                                "(LIDC value names or codes)")
    described.add_argument("--prompt", help="attribute models: every nodule described in words, e.g. '12 mm solid "
                                            "spiculated nodule' (the same as the equivalent --nodule)")
    described.add_argument("--nodules-json", metavar="FILE",
                           help="attribute models: per nodule, a sidecar (<layout>.nodules.json format); default: the "
                                "sidecar next to --layout when there is one")
    syn.add_argument("--guidance", type=float, default=None, metavar="W",
                     help="classifier-free guidance scale w of an attribute model (default: the model's; 1 = plain)")
    syn.add_argument("--progress", default=PROGRESS_MODES[0], choices=PROGRESS_MODES)
    syn.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch (default: torch's choice)")
    syn.set_defaults(func=_cmd_synthesize)

    lm = sub.add_parser("lung-mask", help="automatic lung mask of a CT (classical image processing, CPU); prints "
                                          "each lung's volume, the left/right balance and warnings")
    lm.add_argument("ct")
    lm.add_argument("--output", required=True)
    lm.add_argument("--preview", metavar="PNG", help="also write an axial and a coronal slice with the mask's outline")
    lm.set_defaults(func=_cmd_lung_mask)

    lay = sub.add_parser("layout", help="make a layout (0 background, 1 lung, 2 nodule) from other data")
    lay_sub = lay.add_subparsers(dest="layout_command", required=True)
    fs = lay_sub.add_parser("from-segmentation", help="layout from a label map or a folder of per-structure masks "
                                                     "(TotalSegmentator known by default, nnU-Net, ...)")
    fs.add_argument("segmentation", help="a label map file, or a folder of masks named after their structures")
    fs.add_argument("--output", required=True)
    fs.add_argument("--reference", help="the CT it segments: check the layout against it and report each lung")
    fs.add_argument("--lung-labels", nargs="+", metavar="LABEL",
                    help="label numbers (label map) or structure names (folder) that are lung; default: "
                         f"TotalSegmentator's lobes (numbers {' '.join(str(TOTALSEGMENTATOR_LABELS[n]) for n in LOBES)};"
                         f" files {', '.join(DEFAULT_LUNG)})")
    fs.add_argument("--nodule-labels", nargs="+", metavar="LABEL",
                    help=f"labels or names that are nodules (label 2); default: files {', '.join(DEFAULT_NODULES)}")
    fs.add_argument("--exclude-labels", nargs="+", metavar="LABEL",
                    help="labels or names taken out of the lung; default: the trachea "
                         f"({TOTALSEGMENTATOR_LABELS['trachea']}; files {', '.join(DEFAULT_EXCLUDED)})")
    fs.set_defaults(func=_cmd_layout_from_segmentation)

    an = sub.add_parser("add-nodule", help="paint a nodule (label 2) into a layout, at a point or at random")
    an.add_argument("--layout", required=True)
    an.add_argument("--output", required=True)
    an.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"), help="centre in mm (LPS, or RAS with --ras)")
    an.add_argument("--ras", action="store_true", help="--center is in RAS (as Slicer shows it)")
    an.add_argument("--diameter", type=MILLIMETRES, help="diameter in mm (at most the largest ball that fits in the lung)")
    an.add_argument("--kinds", nargs="+", default=None, choices=NODULE_KINDS,
                    help="texture of the added nodules (--center: the nodule's; --random: drawn from these; default "
                         "solid), recorded in the output's sidecar <stem>.nodules.json (solid 5, part-solid 3, "
                         "ground-glass 1), which attribute models follow")
    an.add_argument("--irregularity", type=number(0.0, 1.0), default=None,
                    help="0 (sphere) to 1 (strongly lobulated); --center: default 0; --random: every nodule's "
                         "(default: each drawn from 0 to 0.5)")
    drawn = an.add_mutually_exclusive_group()
    drawn.add_argument("--nodule", metavar="NAME=VALUE,...",
                       help="the nodules' characteristics, as synthesize takes them, e.g. 'spiculation=5, "
                            "texture=part-solid': sphericity, spiculation and lobulation shape the painted outline; "
                            "all are written to the sidecar for attribute models")
    drawn.add_argument("--prompt", help="the same in words, e.g. '12 mm part-solid spiculated nodule' (a size here is "
                                        "the --center nodule's diameter)")
    an.add_argument("--random", type=POSITIVE, default=None, metavar="N", help="place N random nodules inside the lung")
    an.add_argument("--diameter-range", type=MILLIMETRES, nargs=2, default=None, metavar=("MIN", "MAX"), action=OrderedPair,
                    help=f"--random: diameters in mm, MIN <= MAX (default {RANDOM_DIAMETERS_MM[0]:g} {RANDOM_DIAMETERS_MM[1]:g})")
    an.add_argument("--seed", type=SEED, default=0, help=f"{SEED_HELP} of the nodules' shapes and places")
    an.add_argument("--allow-outside-lung", action="store_true", help="accept a centre outside the lung label")
    an.set_defaults(func=_cmd_add_nodule)

    demo = sub.add_parser("demo", help="phantom -> layout -> synthesis with the bundled demo model -> files + PNG")
    demo.add_argument("--output", default="lungddpm-demo", help="output folder (created)")
    demo.add_argument("--seed", type=SEED, default=0, help=SEED_HELP)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--progress", default=PROGRESS_MODES[0], choices=PROGRESS_MODES)
    demo.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch")
    demo.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="batch: K synthetic variants per reference -> nnU-Net v2 / MONAI data set (sharded, resumable)")
    gen.add_argument("--references", required=True, help="folder of CTs (<id>.nii.gz + optional <id>_layout.nii.gz), or a .csv/.json list (image, id, layout)")
    gen.add_argument("--model", required=True, help="checkpoint, or 'demo'")
    gen.add_argument("--output", required=True, help="root folder (nnUNet_raw-like); the data set goes to Dataset<ID>_<NAME> inside")
    gen.add_argument("--dataset-id", type=int, default=501)
    gen.add_argument("--dataset-name", default="LungDDPMSynthetic")
    gen.add_argument("--variants", type=POSITIVE, default=1, help="synthetic variants per reference (K)")
    gen.add_argument("--seed", type=SEED, default=0, help=f"base {SEED_HELP}; each case's seed derives from it, the reference id and the variant")
    gen.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS)
    gen.add_argument("--steps", type=POSITIVE, default=None,
                     help=f"solver steps (default: the model file's own if it has one, else {GENERATE_SOLVER_STEPS}); "
                          "ddpm always runs the model's T")
    gen.add_argument("--variant", default=VARIANTS[0], choices=VARIANTS, help="AAS noise level (ddpm only)")
    gen.add_argument("--nodules", type=COUNT, default=0, metavar="N", help="add N random nodules per case (lung mask computed where no layout is given)")
    gen.add_argument("--diameter-range", type=MILLIMETRES, nargs=2, default=(6.0, 20.0), metavar=("MIN", "MAX"), action=OrderedPair,
                     help="nodule diameters in mm (MIN <= MAX)")
    gen.add_argument("--kinds", nargs="+", default=[NODULE_KINDS[0]], choices=NODULE_KINDS,
                     help="texture of the random nodules, for attribute models (e.g. demo-nodules); a model without "
                          "attributes takes only the default")
    gen.add_argument("--attributes-from", metavar="SOURCE",
                     help="attribute models: each nodule's attributes drawn (seeded per case) from a mix, e.g. "
                          "'texture=ground-glass:0.3,part-solid:0.3,solid:0.4; spiculation=1,5' (values as --nodule "
                          "takes them, optional relative weights after ':'), or from the rated nodules of a prepared "
                          "data set's manifest.json (or its folder); random nodules are painted with the outline "
                          "their draw asks for (sphericity, spiculation, lobulation)")
    gen.add_argument("--guidance", type=number(0.0), default=None, metavar="W",
                     help="classifier-free guidance scale w of an attribute model (default: the model's; 1 = plain)")
    gen.add_argument("--batch", type=POSITIVE, default=None, metavar="B",
                     help="variants of one reference sampled together: samples per network pass (patch models: cubes; "
                          "default: as many as fit in half the free memory, at most 4; recorded per case)")
    gen.add_argument("--labels", default="layout", choices=sorted(LABEL_SETS), help="labelsTr: 0/1/2 layout (default) or 0/1 nodule only")
    gen.add_argument("--shard", default=None, metavar="I/N", help="this process's shard (default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    gen.add_argument("--device", default="auto", help="auto (= cuda:LOCAL_RANK when CUDA is present), cpu, cuda:N, mps")
    gen.add_argument("--progress", default=PROGRESS_MODES[0], choices=PROGRESS_MODES)
    gen.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch")
    gen.add_argument("--finalize", action="store_true", help="only rebuild dataset.json, datalist.json and manifests from finished cases")
    gen.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("evaluate", help="fidelity metrics of a generated data set (paired, FID/MMD) -> report.json + report.md")
    ev.add_argument("dataset", help="a Dataset<ID>_<NAME> folder made by lungddpm generate")
    ev.add_argument("--output", required=True, help="report folder (report.json, report.md, PNGs)")
    ev.add_argument("--real", default=None, help="real set for FID/MMD (folder or .csv/.json list); default: the data set's references")
    ev.add_argument("--backbone-weights", default=None, help="MedicalNet resnet_*.pth (architecture read from the file)")
    ev.add_argument("--backbone-depth", type=int, default=10, help="random backbone depth (a MedicalNet ResNet depth)")
    ev.add_argument("--backbone-shortcut", default="B", help="random backbone shortcut type (MedicalNet A or B)")
    ev.add_argument("--backbone-seed", type=SEED, default=0, help=f"{SEED_HELP} of the random backbone (without --backbone-weights)")
    ev.add_argument("--feature-size", type=int, default=64, help="volumes are resized to this many voxels per side for features")
    ev.add_argument("--soft-tissue-hu", type=number(), nargs=2, default=(-300.0, 300.0), metavar=("LO", "HI"),
                    action=OrderedPair, equal_ok=False, help="HU range of soft tissue (LO < HI)")
    ev.add_argument("--previews", type=COUNT, default=4, help="cases shown as slice images")
    ev.add_argument("--skip-damaged", action="store_true",
                    help="exit 0 when some cases are damaged or missing (they are left out and listed in the report)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch")
    ev.set_defaults(func=_cmd_evaluate)
    tr = sub.add_parser("train", help="train, fine-tune or resume a model on prepared data (one process or torchrun)",
                        description="Settings come from --config (TOML or YAML), then --set key=value, then the flags. "
                                    "Run many processes with: torchrun --nproc_per_node N -m lungddpm train ...")
    tr.add_argument("--config", help="settings file (.toml, .yaml); see README for the keys")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    tr.add_argument("--data", nargs="+", help="prepared folders (from `lungddpm prepare`)")
    tr.add_argument("--output", help="run folder: checkpoints, latest.pt, log.jsonl, tensorboard/, previews/")
    tr.add_argument("--steps", type=COUNT, help="train until this optimiser step")
    tr.add_argument("--batch-size", type=POSITIVE, help="samples per process per micro-step")
    tr.add_argument("--init", help="fine-tune from this checkpoint (released or lungddpm format)")
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT/latest.pt (model, EMA, optimiser, step, RNG)")
    tr.add_argument("--device", help="auto, cpu, cuda (under torchrun: GPU LOCAL_RANK)")
    tr.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    tr.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in the backward pass")
    tr.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch per process")
    tr.add_argument("--progress", default=PROGRESS_MODES[0], choices=PROGRESS_MODES,
                    help="rank 0's console lines every log_every steps and at each validation: a bar (stderr), "
                         "JSON lines (stdout) or none")
    tr.add_argument("--print-config", action="store_true",
                    help="print the resolved settings as JSON (also valid YAML: save as run.yaml for --config) and exit")
    tr.set_defaults(func=_cmd_train)

    sv = sub.add_parser("serve", help="serve synthesis jobs over HTTP (for Slicer on a machine without a GPU); needs "
                                      'pip install "lungddpm[server]"')
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only; reach it "
                                                       "through an SSH tunnel or a TLS reverse proxy, see README)")
    sv.add_argument("--port", type=whole_number(1, 65535), default=8890)
    sv.add_argument("--token-file", required=True, help="file holding the bearer token clients must send")
    sv.add_argument("--models", default=None, metavar="DIR", help="folder of .pt models offered by file name (the "
                                                                 "bundled demo and demo-nodules are always offered)")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps: one job runs on it at a time")
    sv.add_argument("--work-dir", default="lungddpm-server", help="folder of the jobs' uploads and results (created)")
    sv.add_argument("--max-queue", type=POSITIVE, default=8, help="jobs that may wait; more are refused with 503")
    sv.add_argument("--max-upload-mb", type=number(0.0, low_open=True), default=1024.0,
                    help="largest request (reference + layout) in MB; larger ones are refused with 413")
    sv.add_argument("--keep-hours", type=number(0.0, low_open=True), default=24.0,
                    help="finished jobs and their results are deleted this long after they end")
    sv.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch")
    sv.set_defaults(func=_cmd_serve)

    pr = sub.add_parser("prepare", help="CT folders + nodule masks / LIDC XML / VOC boxes -> prepared training set")
    pr.add_argument("--input", nargs="+", required=True, help="case folders or folders of case folders")
    pr.add_argument("--output", required=True, help="prepared folder (manifest.json, manifest.csv, skipped.json, cases/)")
    pr.add_argument("--profile", default=NATIVE_PROFILE, choices=PROFILE_NAMES,
                    help=f"{PATCH_PROFILE}: Lung-DDPM+ nodule cubes, one sample per cube (use --size 64 for the released model); "
                         f"{NATIVE_PATCH_PROFILE}: the same cubes with the native fixed HU window (for attribute models)")
    pr.add_argument("--size", type=int, default=128, help="model cube size")
    pr.add_argument("--cond-channels", type=int, default=None, choices=[1, 2],
                    help=f"2: lung + nodule (default); 1: nodule only (always for {' and '.join(PATCH_PROFILES)})")
    pr.add_argument("--patch-spacing", type=MILLIMETRES, default=None, metavar="MM",
                    help=f"{' / '.join(PATCH_PROFILES)}: isotropic cube voxel size in mm (default: the CT's own voxels, as released)")
    pr.add_argument("--val-fraction", type=float, default=0.1, help="fraction of patients in the validation split")
    pr.add_argument("--seed", type=SEED, default=0, help=f"{SEED_HELP} of the patient split")
    pr.add_argument("--progress", default="none", choices=["json", "none"])
    pr.set_defaults(func=_cmd_prepare)

    wk = sub.add_parser("worker", help="serve synthesize jobs from stdin (JSON argument lists), keeping models loaded")
    wk.set_defaults(func=_cmd_worker)
    return parser


WORKER_FINISHED = "finished"  # the event `lungddpm worker` prints after each job, with its exit status


def _cmd_worker(args: argparse.Namespace) -> int:
    """Run synthesize jobs read from stdin (one JSON list of its arguments per line), keeping models loaded.

    After each job one line {"event": "finished", "status": N} follows its usual output (N as `synthesize`
    would exit). End of input ends the worker; killing it is the way to cancel a job.
    """
    from lungddpm.synthesis.model_cache import ModelCache

    models, parser = ModelCache(), build_parser()
    print(json.dumps({"event": "ready"}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            argv = json.loads(line)
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ConfigError("a worker job is one JSON list of `synthesize` arguments per line")
            status = _cmd_synthesize(parser.parse_args(["synthesize", *argv]), models)
        except SystemExit as exit_:  # argparse's one-line error (already printed)
            status = exit_.code if isinstance(exit_.code, int) else 2
        except (LungDDPMError, json.JSONDecodeError) as exc:
            status = user_error(exc if isinstance(exc, LungDDPMError) else ConfigError(f"worker job is not JSON: {exc}"))
        except Exception as exc:  # a bug: reported, and the worker goes on with the next job
            status = internal_error(exc)
        sys.stderr.flush()
        print(json.dumps({"event": WORKER_FINISHED, "status": status, "model_loads": models.loads}), flush=True)
    return 0


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LungDDPMError as exc:
        return user_error(exc)
    except Exception as exc:  # a bug, not a user mistake: one line here, the traceback saved to a file
        return internal_error(exc)


if __name__ == "__main__":
    sys.exit(main())
