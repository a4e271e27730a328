"""High-level synthesis: a reference CT + layout in physical space -> a synthetic CT in HU on the same grid.

This is the API that the command line, the Slicer module and batch generation call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lungddpm import __version__
from lungddpm.errors import ConfigError
from lungddpm.io.atomic import outputs_together
from lungddpm.io.volume import Volume, read_volume, refuse_protected, write_volume
from lungddpm.layout.labels import validate_layout
from lungddpm.model.checkpoints import load_model
from lungddpm.model.config import ModelConfig
from lungddpm.model.fastpath import auto_batch, pick_fast_path, running_on
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.runtime.device import resolve_device
from lungddpm.runtime.precision import AUTO
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.options import DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS, default_steps, network_passes
from lungddpm.sampling.sample import sample_batches
from lungddpm.synthesis.conditions import Request, check_request, nodule_attributes, provenance_entries, sample_conditions
from lungddpm.synthesis.patches import PatchProfile
from lungddpm.synthesis.profiles import GridProfile, get_profile

SYNTHETIC_DESCRIPTION = "SYNTHETIC CT made by lungddpm - not a patient scan"


@dataclass
class SynthesisResult:
    """A synthetic CT in HU on the reference grid, the exact layout it was made from, and provenance."""

    image: Volume
    labels: Volume
    metadata: dict[str, str]


def _as_volume(value: str | Path | Volume, name: str | None, role: str) -> tuple[Volume, str]:
    """A Volume and how messages and provenance name it: the name given, else its path, else 'in-memory <role>'."""
    if isinstance(value, Volume):
        return value, name or f"in-memory {role}"
    return read_volume(value), name or str(value)


def _as_model(model: str | Path | LungDDPM, device: torch.device) -> LungDDPM:
    """A loaded model on device, from a checkpoint path or a LungDDPM."""
    if isinstance(model, LungDDPM):
        return model.to(device).eval()
    return load_model(model, device=device)


@dataclass(frozen=True)
class Variant:
    """One case of a batched synthesis on a shared reference: its layout, seed and nodule attribute request."""

    layout: str | Path | Volume
    seed: int = 0
    attributes: Request = None
    layout_name: str | None = None  # the file an in-memory layout came from, for messages and provenance


def synthesize(
    reference: str | Path | Volume,
    layout: str | Path | Volume,
    model: str | Path | LungDDPM,
    *,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    variant: str = "paper",
    margin_mm: float | None = None,
    precision: str = AUTO,
    patch_spacing_mm: float | None = None,
    reference_name: str | None = None,
    layout_name: str | None = None,
    attributes: Request = None,
    guidance: float | None = None,
    batch: int | None = None,
) -> SynthesisResult:
    """Synthesise a CT from a reference CT and a layout (0 background, 1 lung, 2 nodule) on its grid.

    Full-volume models (Lung-DDPM, native): inside the lung region the output is the model's sample
    in HU, blended into the reference over ``margin_mm`` (default: one model-grid voxel) inside the
    region's border. Patch models (Lung-DDPM+): each nodule's cube is synthesised and its nodule
    pasted back (see ``synthesis.patches``). Everywhere else the output is the reference, voxel for
    voxel, with the reference's grid and pixel type. ``progress(step, total)`` is called with step 0
    once the model is loaded and the inputs are in model space, then per network pass.
    ``precision``: auto (the device's fastest measured path, ``model.fastpath.pick_fast_path``), fp32, or
    bf16/fp16 autocast of the network; the path taken is in the metadata. ``patch_spacing_mm`` overrides a patch
    model's cube voxel size (default: the model's; None there means the reference's own voxels).
    ``reference_name`` / ``layout_name``: the files in-memory Volumes came from, for messages and provenance.
    ``attributes``: for a model conditioned on nodule attributes, one record for every nodule or sidecar
    records matched by centre (see ``synthesis.conditions``); ``guidance``: the classifier-free guidance
    scale w (default: the model's). Both are refused for a model without attributes. ``batch``: samples
    (patch mode: cubes) per network pass (None: ``model.fastpath.auto_batch``).
    """
    (result,) = synthesize_variants(reference, [Variant(layout, seed, attributes, layout_name)], model, sampler=sampler,
                                    steps=steps, device=device, progress=progress, variant=variant, margin_mm=margin_mm,
                                    precision=precision, patch_spacing_mm=patch_spacing_mm,
                                    reference_name=reference_name, guidance=guidance, batch=batch)
    return result


def synthesize_variants(
    reference: str | Path | Volume,
    variants: Sequence[Variant],
    model: str | Path | LungDDPM,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    variant: str = "paper",
    margin_mm: float | None = None,
    precision: str = AUTO,
    patch_spacing_mm: float | None = None,
    reference_name: str | None = None,
    guidance: float | None = None,
    batch: int | None = None,
) -> list[SynthesisResult]:
    """``synthesize`` for several variants of one reference, their samples sharing network passes (one result each).

    Every sample keeps its own generator (its variant's seed; patch mode: ``patch_seed`` per cube), so a
    variant draws the same noise whatever it is batched with. Its image is the one it gets alone up to the
    network's batch-size-dependent rounding (oneDNN and BLAS pick kernels by batch size, so sums are taken in
    another order; README, Batching, gives the measured differences). ``batch``: samples per network pass
    (None: ``model.fastpath.auto_batch``, what fits in memory); the number used and the rule are in the metadata.
    """
    if not variants:
        raise ConfigError("synthesize_variants needs at least one variant (a layout and its seed)")
    if batch is not None and batch < 1:
        raise ConfigError(f"batch {batch} (--batch) must be at least 1 sample per network pass")
    ref, ref_name = _as_volume(reference, reference_name, "reference")
    layouts = [_as_volume(v.layout, v.layout_name, "layout") for v in variants]
    for lay, lay_name in layouts:
        validate_layout(ref, lay, ct_name=ref_name, layout_name=lay_name)
    dev = resolve_device(device)
    path = pick_fast_path(dev, precision)
    net = _as_model(model, dev)
    n_steps, profile = check_settings(net.config, _model_name(net), sampler=sampler, steps=steps, variant=variant,
                                      attributes=variants[0].attributes, guidance=guidance, margin_mm=margin_mm,
                                      patch_spacing_mm=patch_spacing_mm)
    w = net.config.guidance_scale if guidance is None else float(guidance)
    start = time.perf_counter()
    for v in variants[1:]:
        check_request(net.config, _model_name(net), v.attributes, guidance)
    cases, seeds, conditions, extra_meta = [], [], [], []
    for v, (lay, _) in zip(variants, layouts):
        by_component = nodule_attributes(lay, v.attributes)
        case = profile.encode_case(ref, lay, net.config)
        cases.append(case)
        seeds += profile.sample_seeds(v.seed, len(case))
        if net.config.attributes:
            vectors, used = sample_conditions(net.config, lay, profile.nodule_groups(case, lay), by_component)
            conditions.append(vectors)
            extra_meta.append(provenance_entries(net.config, w, used))
        else:
            extra_meta.append({})
    per_pass = (min(batch, len(seeds)) if batch is not None
                else auto_batch(net.config, dev, len(seeds), is_guided(net.config, guidance)))
    with running_on(net, path):
        x0 = sample_batches(net, torch.cat([c.cond for c in cases]), torch.cat([c.x_ref for c in cases]), seeds, per_pass,
                            sampler=sampler, steps=n_steps, variant=variant, progress=progress, precision=path.precision,
                            x0_correction=profile.x0_correction, attributes=torch.cat(conditions) if conditions else None,
                            guidance=w)
    results, first = [], 0
    for v, case, (lay, lay_name), meta in zip(variants, cases, layouts, extra_meta):
        image, extra = profile.decode_case(x0[first : first + len(case)], case, ref, lay)
        first += len(case)
        labels = lay.with_array(np.asarray(lay.array, dtype=np.uint8).copy())
        metadata = provenance(net, sampler=sampler, steps=n_steps, seed=v.seed, device=dev, variant=variant)
        # file names only: full paths would leak local folders into shared files
        metadata.update({"reference": Path(ref_name).name, "layout": Path(lay_name).name, **path.provenance(),
                         "batch": str(per_pass),
                         "batch_rule": "auto" if batch is None else "given", "batch_cases": str(len(variants)), **extra, **meta})
        results.append(SynthesisResult(image, labels, metadata))
    elapsed = f"{time.perf_counter() - start:.1f}"  # the call's: shared by the variants sampled together
    for result in results:
        result.metadata["sampling_seconds"] = elapsed
    return results


def is_guided(config: ModelConfig, guidance: float | None) -> bool:
    """Whether every pass runs the network twice (classifier-free guidance: an attribute model at w ≠ 1)."""
    w = config.guidance_scale if guidance is None else float(guidance)
    return bool(config.attributes) and w != 1.0


def check_settings(config: ModelConfig, model_name: str, *, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
                   variant: str = "paper", attributes: Request = None, guidance: float | None = None,
                   margin_mm: float | None = None,
                   patch_spacing_mm: float | None = None) -> tuple[int, GridProfile | PatchProfile]:
    """(network passes, profile) of a request to a model; a setting the model refuses raises with the fix, before any work."""
    check_request(config, model_name, attributes, guidance)
    n_steps = network_passes(sampler, steps, config.timesteps, variant, default_steps(config.solver_steps, DEFAULT_SOLVER_STEPS))
    return n_steps, profile_for(config, blend_margin_mm=margin_mm, patch_spacing_mm=patch_spacing_mm)


def _model_name(model: LungDDPM) -> str:
    """The model's file name for messages."""
    return Path(model.source.path).name if model.source else "in-memory model"


def profile_for(config: ModelConfig, *, blend_margin_mm: float | None = None,
                patch_spacing_mm: float | None = None) -> GridProfile | PatchProfile:
    """The profile a model's case goes through; options that do not apply to it are refused with the fix."""
    if not config.is_patch_model:
        if patch_spacing_mm is not None:
            raise ConfigError(f"patch_spacing_mm (--patch-spacing) applies to Lung-DDPM+ patch models only; this model's "
                              f"profile is {config.profile!r}: leave it out")
        return get_profile(config.profile, blend_margin_mm=blend_margin_mm)
    if blend_margin_mm is not None:
        raise ConfigError("margin_mm (the blend margin of full-volume models) does not apply to a Lung-DDPM+ patch model, "
                          "which pastes its cubes at their nodules: leave it out")
    if patch_spacing_mm is not None and not patch_spacing_mm > 0:
        raise ConfigError(f"patch_spacing_mm (--patch-spacing) must be a positive voxel size in mm; got {patch_spacing_mm}")
    return PatchProfile(config.patch_spacing_mm if patch_spacing_mm is None else float(patch_spacing_mm), config.profile)


def provenance(model: LungDDPM, *, sampler: str, steps: int, seed: int, device: torch.device, variant: str) -> dict[str, str]:
    """Key/value provenance recorded in every synthetic image (marks it SYNTHETIC)."""
    src = model.source
    return {
        "SYNTHETIC": "true",
        "descrip": SYNTHETIC_DESCRIPTION,
        "lungddpm_version": __version__,
        "model": _model_name(model),
        "model_sha256": src.sha256 if src else "",
        "model_weights": src.weights if src else "",
        "profile": model.config.profile,
        "sampler": sampler,
        "aas_variant": variant,
        "steps": str(steps),
        "seed": str(seed),
        "device": str(device),
    }


def planned_outputs(output: str | Path) -> tuple[Path, Path]:
    """The image path and its labels path (<stem>_labels<ext>) that write_result will write."""
    output = Path(output)
    name = output.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else output.suffix
    return output, output.with_name(name[: len(name) - len(ext)] + "_labels" + ext)


def output_bytes(reference: Volume) -> int:
    """The most bytes write_result writes for a reference: the image in its pixel type plus uint8 labels, uncompressed."""
    return reference.array.nbytes + reference.array.size


def write_result(result: SynthesisResult, output: str | Path, *, protect: tuple[str | Path, ...] = ()) -> tuple[Path, Path]:
    """Write the synthetic CT and its labels (see planned_outputs), both or neither; never overwrite a protected input."""
    image_path, labels_path = planned_outputs(output)
    for target in (image_path, labels_path):
        refuse_protected(target, protect)
    labels_meta = {**result.metadata, "descrip": "layout of a SYNTHETIC CT (0 background, 1 lung, 2 nodule)"}
    with outputs_together():
        write_volume(result.image, image_path, metadata=result.metadata, protect=protect)
        write_volume(result.labels, labels_path, metadata=labels_meta, protect=protect)
    return image_path, labels_path
