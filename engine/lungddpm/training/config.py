"""Training-run configuration: one flat table of settings from a TOML or YAML file plus command-line overrides.

Precedence: defaults < config file < ``--set key=value`` < explicit command-line flags. Unknown keys
are an error that lists the known ones. Defaults reproduce the released trainer (Adam lr 1e-5, batch 1,
accumulation 2, EMA 0.995 every 10 steps from step 2000, 100 k steps) at the released 128³ width.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lungddpm.model.config import NATIVE_PROFILE, PATCH_PROFILES, RELEASED_CHANNEL_MULT, ModelConfig
from lungddpm.errors import ConfigError
from lungddpm.sampling.options import MAX_SEED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class RunConfig:
    """Everything a `lungddpm train` run needs: data, model, optimisation, precision, logging, output."""

    data: list[str] = field(default_factory=list)  # prepared folders (or their manifest.json)
    output: str = "runs/lungddpm"
    # model (ignored when `init` names a checkpoint: its configuration is kept); defaults: ModelConfig's
    profile: str = NATIVE_PROFILE
    image_size: int = ModelConfig.image_size
    num_channels: int = ModelConfig.num_channels
    num_res_blocks: int = ModelConfig.num_res_blocks
    channel_mult: list[int] | None = None  # None: the released choice for image_size
    attention_resolutions: list[int] = field(default_factory=lambda: list(ModelConfig.attention_resolutions))
    in_channels: int | None = None  # None: 3 (noisy CT + lung + nodule), or 2 (+ nodule) for a patch profile
    patch_spacing_mm: float | None = None  # patch profile: the cube's voxel size in mm; None = the CT's own voxels
    timesteps: int = ModelConfig.timesteps
    attributes: list[str] = field(default_factory=list)  # nodule attributes to condition on (LIDC characteristic names)
    guidance_scale: float = ModelConfig.guidance_scale  # the default classifier-free guidance w stored in the model
    cond_dropout: float = 0.15  # attribute models: probability that a sample's attributes are dropped (unknown)
    init: str | None = None  # fine-tune from this checkpoint (released or lungddpm format)
    init_weights: str = "ema"
    # optimisation (per-process batch; global batch = processes x batch_size x grad_accum); defaults: the
    # released trainer's (Adam lr 1e-5, batch 1, accumulation 2, EMA 0.995 every 10 steps from step 2000)
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 2
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    steps: int = 100_000
    save_every: int = 1000
    seed: int = 0
    # compute
    device: str = "auto"
    bf16: bool = False
    grad_checkpoint: bool = False
    workers: int = 2
    # logging
    log_every: int = 10
    preview_every: int = 1000  # 0: no previews
    preview_steps: int = 10  # DDIM network passes per preview
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        for name in ("batch_size", "grad_accum", "ema_every", "save_every", "log_every", "preview_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.steps < 0 or self.workers < 0 or self.preview_every < 0:
            raise ConfigError("steps, workers and preview_every must be ≥ 0")
        if self.init_weights not in ("ema", "model"):
            raise ConfigError(f"init_weights {self.init_weights!r} must be 'ema' or 'model'")
        if self.lr <= 0:
            raise ConfigError(f"lr {self.lr} must be positive")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout {self.cond_dropout} must lie in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay {self.ema_decay} must lie in [0, 1)")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed {self.seed} must lie in 0 .. {MAX_SEED} (2**63 - 1)")

    def model_config(self) -> ModelConfig:
        """The network + schedule this run builds when it does not start from a checkpoint."""
        mult = self.channel_mult or RELEASED_CHANNEL_MULT.get(self.image_size)
        if mult is None:
            raise ConfigError(f"no released channel_mult for image_size {self.image_size}; set channel_mult, e.g. [1, 2, 2]")
        return ModelConfig(
            image_size=self.image_size, num_channels=self.num_channels, num_res_blocks=self.num_res_blocks,
            channel_mult=tuple(mult), attention_resolutions=tuple(self.attention_resolutions),
            in_channels=(2 if self.profile in PATCH_PROFILES else 3) if self.in_channels is None else self.in_channels,
            timesteps=self.timesteps, profile=self.profile, patch_spacing_mm=self.patch_spacing_mm,
            attributes=tuple(self.attributes), guidance_scale=self.guidance_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (for checkpoints and the run folder's config.json)."""
        return asdict(self)


KNOWN_KEYS = tuple(f.name for f in fields(RunConfig))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings table of a .toml, .yaml or .yml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a .toml or .yaml file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with open(path, "rb") as f:
                table = tomllib.load(f)
        elif suffix in (".yaml", ".yml"):
            import yaml

            table = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"config file {path}: unknown type {suffix!r}; use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {exc}") from None
    except ImportError:
        raise ConfigError("YAML config files need PyYAML: pip install 'lungddpm[train]', or use a .toml file") from None
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path} must hold a table of key = value settings")
    return table


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value); the value is read as JSON (numbers, true/false, lists) or else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. lr=2e-5 or channel_mult=[1,2,2]")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def build_run_config(file: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> RunConfig:
    """Defaults, then the file, then key=value overrides, then explicit flags (None = not given)."""
    settings: dict[str, Any] = read_config_file(file) if file else {}
    settings.update(parse_override(o) for o in overrides)
    settings.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(settings) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(f"unknown training settings {unknown}; known settings: {', '.join(KNOWN_KEYS)}")
    try:
        return RunConfig(**{k: _coerce(k, v) for k, v in settings.items()})
    except TypeError as exc:
        raise ConfigError(f"training settings do not fit: {exc}") from None


_NUMERIC = {f.name: type(f.default) for f in fields(RunConfig) if type(f.default) in (int, float)}
_NUMERIC.update(in_channels=int, patch_spacing_mm=float)  # numbers whose default is None


def _coerce(key: str, value: Any) -> Any:
    """Numbers given as text (YAML reads 1e-5 as a string) converted to the setting's type."""
    kind = _NUMERIC.get(key)
    if kind is None or isinstance(value, bool) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {key} = {value!r} must be a number") from None
    if kind is int and number != int(number):
        raise ConfigError(f"setting {key} = {value!r} must be a whole number")
    return kind(number)
