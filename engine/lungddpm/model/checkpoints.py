"""Model files: the authors' released checkpoints and the project's self-describing format.

Released format (``torch.save({"step", "model", "ema"})``): each entry is the state dict of the
released ``GaussianDiffusion`` wrapper, 13 schedule buffers plus U-Net parameters prefixed
``denoise_fn.``. The configuration is inferred from tensor shapes. Project format: a dict with
``format == "lungddpm-checkpoint"``, the configuration as plain types, the step, and the U-Net
weights (``model`` and ``ema``), so a model file describes itself. Files are always read with
``torch.load(..., weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lungddpm import __version__
from lungddpm.model.config import ATTENTIONS, PATCH_PROFILE, RELEASED_PROFILE, ModelConfig
from lungddpm.runtime.device import resolve_device
from lungddpm.model.diffusion import SCHEDULE_BUFFERS, schedule_tensors
from lungddpm.errors import CheckpointError, ConfigError
from lungddpm.io.atomic import atomic_output
from lungddpm.model.lungddpm import LungDDPM

PROJECT_FORMAT = "lungddpm-checkpoint"
PROJECT_FORMAT_VERSION = 1
PREFIX = "denoise_fn."
RELEASED_ATTENTION_RESOLUTION = 16  # the released create_model's default attention_resolutions="16"
StateDict = dict[str, torch.Tensor]


@dataclass
class CheckpointInfo:
    """Where a model came from: file, SHA-256, format, training step, which weights were loaded."""

    path: str
    sha256: str
    format: str
    step: int | None
    weights: str


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(path, weights_only=True) on CPU, with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file; give the path of a .pt model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on foreign or damaged files
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain containers; it is refused "
                "because loading it would execute code. Use a released Lung-DDPM file or one written by lungddpm"
            ) from None
        # torch's own text would advise weights_only=False, which is never the fix here
        raise CheckpointError(
            f"checkpoint {path} could not be read: {_unreadable_reason(path)}; give a released Lung-DDPM or lungddpm "
            "model file (a damaged download: download it again and compare its SHA-256)"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict; it is not a Lung-DDPM model file")
    return obj


def checkpoint_solver_steps(path: str | Path) -> int | None:
    """The model file's own default solver steps (ModelConfig.solver_steps); None for a released or older file."""
    config = read_checkpoint(path).get("config")
    return config.get("solver_steps") if isinstance(config, dict) else None


def _unreadable_reason(path: Path) -> str:
    """What a file that torch.load refused looks like: empty, text, a damaged PyTorch file, or something else."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "it is a truncated or damaged PyTorch file"
    if all(c.isprintable() or c in "\t\n\r" for c in head.decode("utf-8", "replace")):
        return "it is a text file, not a model"
    return "it is not a PyTorch file"


def _strip_module_prefix(sd: StateDict) -> StateDict:
    """Remove a DataParallel/DDP 'module.' prefix if every key carries it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _unet_weights(sd: StateDict) -> StateDict:
    """The U-Net parameters of a GaussianDiffusion state dict, without prefix, as float32."""
    return {k[len(PREFIX) :]: v.float() for k, v in sd.items() if k.startswith(PREFIX)}


def infer_released_config(sd: StateDict, *, image_size: int | None = None, num_heads: int = 1) -> ModelConfig:
    """Rebuild the configuration of a released GaussianDiffusion state dict from its tensor shapes."""
    try:
        return _infer_config(sd, image_size, num_heads)
    except KeyError as exc:
        raise CheckpointError(f"state dict lacks the U-Net entry {PREFIX}{exc.args[0]}; it is not a Lung-DDPM model") from None


def _infer_config(sd: StateDict, image_size: int | None, num_heads: int) -> ModelConfig:
    """infer_released_config's body; a missing key raises KeyError."""
    w = _unet_weights(sd)
    mc = w["time_embed.0.weight"].shape[1]
    in_channels = w["input_blocks.0.0.weight"].shape[1]
    out_channels = w["out.2.weight"].shape[0]
    indices = sorted({int(m.group(1)) for k in w if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]  # residual-block indices of each encoder level
    for i in indices[1:]:
        if f"input_blocks.{i}.0.op.weight" in w:
            levels.append([])
        else:
            levels[-1].append(i)
    blocks_per_level = [len(lv) for lv in levels]
    if 0 in blocks_per_level or len(set(blocks_per_level)) != 1:
        raise CheckpointError(f"residual blocks per level {blocks_per_level} do not form a released U-Net layout")
    channel_mult = [w[f"input_blocks.{lv[0]}.0.in_layers.2.weight"].shape[0] // mc for lv in levels]
    attention_ds = [2**n for n, lv in enumerate(levels) if any(f"input_blocks.{i}.1.qkv.weight" in w for i in lv)]
    if image_size is None:
        if not attention_ds:
            raise CheckpointError("cannot infer the image size (no attention levels); pass image_size=")
        image_size = RELEASED_ATTENTION_RESOLUTION * attention_ds[0]
    betas = sd.get("betas")
    if betas is None:
        raise CheckpointError("state dict has no 'betas' schedule buffer; not a released GaussianDiffusion state dict")
    profile = RELEASED_PROFILE if in_channels - out_channels == 2 else PATCH_PROFILE
    try:
        return ModelConfig(
            image_size=image_size,
            num_channels=mc,
            num_res_blocks=blocks_per_level[0],
            channel_mult=tuple(channel_mult),
            attention_resolutions=tuple(image_size // ds for ds in attention_ds),
            num_heads=num_heads,
            in_channels=in_channels,
            out_channels=out_channels,
            timesteps=int(betas.shape[0]),
            profile=profile,
        )
    except ConfigError as exc:
        raise CheckpointError(f"the tensor shapes describe an impossible configuration: {exc}") from None


def check_schedule(sd: StateDict, timesteps: int, source: str) -> None:
    """Raise CheckpointError if stored schedule buffers differ from the released cosine schedule."""
    expected = schedule_tensors(timesteps)
    for name in SCHEDULE_BUFFERS:
        if name in sd and not torch.allclose(sd[name].float(), expected[name], rtol=1e-4, atol=1e-6):
            raise CheckpointError(
                f"{source}: schedule buffer {name!r} differs from the released cosine schedule with T={timesteps}; "
                "this model was trained with another noise schedule, which lungddpm does not support"
            )


def _load_weights(model: LungDDPM, weights: StateDict, source: str) -> None:
    """load_state_dict(strict) with a readable list of missing, unexpected and mis-shaped keys."""
    own = model.denoise_fn.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise CheckpointError(f"{source} does not match the model configuration: " + "; ".join(parts))
    model.denoise_fn.load_state_dict(weights)


def _require_finite(weights: StateDict, source: str) -> None:
    """Raise CheckpointError when weights hold NaN or infinite values (a diverged training run or a damaged file)."""
    bad = {name: int((~torch.isfinite(w)).sum()) for name, w in weights.items() if w.is_floating_point()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        raise CheckpointError(f"{source}: {sum(bad.values())} weight values in {len(bad)} tensor(s) are NaN or infinite "
                              f"(e.g. {next(iter(bad))}): the training diverged or the file is damaged; use another "
                              "checkpoint")


def _check_expected(config: ModelConfig, expect: dict[str, Any] | None, source: str) -> None:
    """Raise CheckpointError when a requested configuration value differs from the file's."""
    for key, want in (expect or {}).items():
        if not hasattr(config, key):
            raise ConfigError(f"unknown configuration key {key!r} in expect=")
        have = getattr(config, key)
        if (tuple(have) if isinstance(have, (list, tuple)) else have) != (tuple(want) if isinstance(want, (list, tuple)) else want):
            raise CheckpointError(f"{source} has {key}={have!r}, but {want!r} was requested; choose the matching model file")


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    weights: str = "ema",
    expect: dict[str, Any] | None = None,
    image_size: int | None = None,
    attention: str = ATTENTIONS[0],
) -> LungDDPM:
    """Load a released or project checkpoint into a LungDDPM in eval mode on device.

    ``weights``: "ema" (default, as the released inference) or "model". ``expect``: configuration
    values the file must have (e.g. ``{"image_size": 128, "in_channels": 3}``). ``image_size``
    overrides the size inferred for released files (which follows the released convention that
    attention sits at image_size / 16).
    """
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', not {weights!r}")
    source = f"checkpoint {path}"
    obj = read_checkpoint(path)
    if obj.get("format") == PROJECT_FORMAT:
        config, unet, step, fmt = _read_project(obj, weights, source)
    elif "denoise_fn.time_embed.0.weight" in _strip_module_prefix(obj.get(weights) or obj):
        sd = _strip_module_prefix(obj.get(weights) or obj)
        config = infer_released_config(sd, image_size=image_size)
        check_schedule(sd, config.timesteps, source)
        unet, step, fmt = _unet_weights(sd), obj.get("step"), "released"
    else:
        raise CheckpointError(
            f"{source} is not a Lung-DDPM checkpoint: expected the released format "
            f"({{'step', 'model', 'ema'}} GaussianDiffusion state dicts) or a lungddpm file; "
            f"found top-level keys {sorted(map(str, obj))[:8]}"
        )
    _require_finite(unet, source)
    config.attention = attention
    config.validate()
    _check_expected(config, expect, source)
    model = LungDDPM(config)
    _load_weights(model, unet, source)
    model.source = CheckpointInfo(str(path), file_sha256(path), fmt, step, weights)
    return model.to(resolve_device(device)).eval()


def _read_project(obj: dict[str, Any], weights: str, source: str) -> tuple[ModelConfig, StateDict, int | None, str]:
    """Configuration and U-Net weights of a project-format checkpoint."""
    version = obj.get("format_version")
    if version != PROJECT_FORMAT_VERSION:
        raise CheckpointError(f"{source} has format version {version}; this lungddpm reads version {PROJECT_FORMAT_VERSION}. Upgrade lungddpm")
    try:
        config = ModelConfig.from_dict(dict(obj["config"]))
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{source} has an unusable configuration: {exc}") from None
    sd = obj.get(weights)
    if not isinstance(sd, dict):
        held = [k for k in ("model", "ema") if isinstance(obj.get(k), dict)]
        raise CheckpointError(f"{source} holds no '{weights}' weights (it holds {held}); load with weights={held[0]!r}" if held
                              else f"{source} holds no weights")
    return config, {k: v.float() for k, v in sd.items()}, obj.get("step"), "lungddpm"


def save_checkpoint(
    path: str | Path,
    model: LungDDPM,
    *,
    ema: torch.nn.Module | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    store: tuple[str, ...] = ("model", "ema"),
) -> Path:
    """Write a project-format checkpoint atomically (temporary file in the same folder, then rename).

    ``store`` selects the weights written: the model's, the EMA's (``ema`` or else the model's), or both.
    """
    path = Path(path)
    payload: dict[str, Any] = {
        "format": PROJECT_FORMAT,
        "format_version": PROJECT_FORMAT_VERSION,
        "engine_version": __version__,
        "config": model.config.to_dict(),
        "step": int(step),
    }
    nets = {"model": model.denoise_fn, "ema": ema or model.denoise_fn}
    for name in store:
        payload[name] = {k: v.detach().cpu() for k, v in nets[name].state_dict().items()}
    payload.update(extra or {})
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)
    return path


def released_state_dict(model: LungDDPM, net: torch.nn.Module | None = None) -> StateDict:
    """The released GaussianDiffusion state dict (13 schedule buffers + 'denoise_fn.' parameters)."""
    sd = {name: getattr(model.diffusion, name).detach().cpu() for name in SCHEDULE_BUFFERS}
    sd.update({PREFIX + k: v.detach().cpu() for k, v in (net or model.denoise_fn).state_dict().items()})
    return sd
