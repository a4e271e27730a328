"""High-level synthesis: a reference CT + layout in physical space -> a synthetic CT in HU on the same grid.

This is the API that the command line, the Slicer module and batch generation call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lungddpm import __version__
from lungddpm.model.checkpoints import load_model
from lungddpm.model.config import DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS, SAMPLERS
from lungddpm.runtime.device import resolve_device
from lungddpm.errors import ConfigError
from lungddpm.layout.labels import validate_layout
from lungddpm.model.lungddpm import LungDDPM
from lungddpm.synthesis.patches import synthesize_patches
from lungddpm.synthesis.profiles import get_profile
from lungddpm.synthesis.regrid import to_reference_grid
from lungddpm.runtime.progress import ProgressCallback
from lungddpm.sampling.ancestral import sample_aas
from lungddpm.sampling.noise import make_generator
from lungddpm.sampling.solvers import sample_aas_solver
from lungddpm.io.volume import Volume, read_volume, refuse_protected, to_pixel_type, write_volume

SYNTHETIC_DESCRIPTION = "SYNTHETIC CT made by lungddpm - not a patient scan"


@dataclass
class SynthesisResult:
    """A synthetic CT in HU on the reference grid, the exact layout it was made from, and provenance."""

    image: Volume
    labels: Volume
    metadata: dict[str, str]


def _as_volume(value: str | Path | Volume) -> tuple[Volume, str]:
    """A Volume and its path for messages, from a path or a Volume."""
    if isinstance(value, Volume):
        return value, "<in-memory volume>"
    return read_volume(value), str(value)


def _as_model(model: str | Path | LungDDPM, device: torch.device) -> LungDDPM:
    """A loaded model on device, from a checkpoint path or a LungDDPM."""
    if isinstance(model, LungDDPM):
        return model.to(device).eval()
    return load_model(model, device=device)


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
    precision: str = "fp32",
    patch_spacing_mm: float | None = None,
) -> SynthesisResult:
    """Synthesise a CT from a reference CT and a layout (0 background, 1 lung, 2 nodule) on its grid.

    Full-volume models (Lung-DDPM, native): inside the lung region the output is the model's sample
    in HU, blended into the reference over ``margin_mm`` (default: one model-grid voxel) inside the
    region's border. Patch models (Lung-DDPM+): each nodule's cube is synthesised and its nodule
    pasted back (see ``lungddpm.patches``). Everywhere else the output is the reference, voxel for
    voxel, with the reference's grid and pixel type. ``progress(step, total)`` is called with step 0
    once the model is loaded and the inputs are in model space, then per network pass.
    ``precision``: fp32, or bf16/fp16 autocast of the network. ``patch_spacing_mm`` overrides a patch
    model's cube voxel size (default: the model's; None there means the reference's own voxels).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is not available; choose one of {SAMPLERS}")
    ref, ref_name = _as_volume(reference)
    lay, lay_name = _as_volume(layout)
    validate_layout(ref, lay, ct_name=ref_name, layout_name=lay_name)
    dev = resolve_device(device)
    net = _as_model(model, dev)
    T = net.config.timesteps
    if sampler == "ddpm" and steps not in (None, T):
        raise ConfigError(f"the ddpm sampler runs all {T} steps of this model; omit steps or pass steps={T}, "
                          "or choose a fast sampler (ddim, dpmpp2m, dpmpp3m) for fewer steps")
    if sampler != "ddpm" and variant != "paper":
        raise ConfigError(f"the {variant!r} AAS variant exists only for the ddpm sampler; fast samplers paste the "
                          "reference at each step's own noise level (as the paper does)")
    if patch_spacing_mm is not None:
        if net.config.profile != "released-patch":
            raise ConfigError(f"patch_spacing_mm (--patch-spacing) applies to Lung-DDPM+ patch models only; this model's "
                              f"profile is {net.config.profile!r}: leave it out")
        if not patch_spacing_mm > 0:
            raise ConfigError(f"patch_spacing_mm (--patch-spacing) must be a positive voxel size in mm; got {patch_spacing_mm}")
    n_steps = T if sampler == "ddpm" else int(steps or min(DEFAULT_SOLVER_STEPS, T))
    start = time.perf_counter()
    if net.config.profile == "released-patch":
        spacing = net.config.patch_spacing_mm if patch_spacing_mm is None else float(patch_spacing_mm)
        hu, cubes = synthesize_patches(ref, lay, net, seed=seed, sampler=sampler, steps=n_steps, progress=progress,
                                       variant=variant, precision=precision, patch_spacing_mm=spacing)
        image = ref.with_array(to_pixel_type(hu, ref.array.dtype))
        extra = {"patches": str(cubes), "patch_spacing_mm": "reference voxels" if spacing is None else f"{spacing:g}"}
    else:
        image, margin = _synthesize_volume(ref, lay, net, seed, sampler, n_steps, progress, variant, margin_mm, precision)
        extra = {"blend_margin_mm": f"{margin:g}"}
    elapsed = time.perf_counter() - start
    labels = lay.with_array(np.asarray(lay.array, dtype=np.uint8).copy())
    metadata = provenance(net, sampler=sampler, steps=n_steps, seed=seed, device=dev, variant=variant)
    # file names only: full paths would leak local folders into shared files
    metadata.update({"reference": Path(ref_name).name, "layout": Path(lay_name).name, "sampling_seconds": f"{elapsed:.1f}",
                     "precision": precision, **extra})
    return SynthesisResult(image, labels, metadata)


def _synthesize_volume(ref: Volume, lay: Volume, net: LungDDPM, seed: int, sampler: str, n_steps: int,
                       progress: ProgressCallback | None, variant: str, margin_mm: float | None,
                       precision: str) -> tuple[Volume, float]:
    """Full-volume synthesis: map to the model grid, sample with AAS, blend back inside the lungs."""
    profile = get_profile(net.config.profile)
    space = profile.encode(ref, lay, net.config.image_size, net.config.cond_channels)
    if progress is not None:
        progress(0, n_steps)  # model loaded and inputs mapped: sampling starts
    generator = make_generator(seed, net.device)
    if sampler == "ddpm":
        x0 = sample_aas(net, space.cond, space.x_ref, variant=variant, generator=generator, progress=progress,
                        precision=precision)
    else:
        x0 = sample_aas_solver(net, space.cond, space.x_ref, sampler, n_steps, generator=generator, progress=progress,
                               precision=precision)
    hu = profile.decode(x0, space)
    margin = float(min(space.grid.GetSpacing())) if margin_mm is None else float(margin_mm)
    return to_reference_grid(hu, space, ref, lay, margin), margin


def provenance(model: LungDDPM, *, sampler: str, steps: int, seed: int, device: torch.device, variant: str) -> dict[str, str]:
    """Key/value provenance recorded in every synthetic image (marks it SYNTHETIC)."""
    src = model.source
    return {
        "SYNTHETIC": "true",
        "descrip": SYNTHETIC_DESCRIPTION,
        "lungddpm_version": __version__,
        "model": Path(src.path).name if src else "in-memory model",
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


def write_result(result: SynthesisResult, output: str | Path, *, protect: tuple[str | Path, ...] = ()) -> tuple[Path, Path]:
    """Write the synthetic CT and its labels (see planned_outputs); never overwrite a protected input."""
    image_path, labels_path = planned_outputs(output)
    for target in (image_path, labels_path):
        refuse_protected(target, protect)
    write_volume(result.image, image_path, metadata=result.metadata, protect=protect)
    labels_meta = {**result.metadata, "descrip": "layout of a SYNTHETIC CT (0 background, 1 lung, 2 nodule)"}
    write_volume(result.labels, labels_path, metadata=labels_meta, protect=protect)
    return image_path, labels_path
