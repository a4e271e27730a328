"""Training-run configuration: one flat table of settings from a TOML or YAML file plus command-line overrides.

Precedence: defaults < config file < ``--set key=value`` < explicit command-line flags. Unknown keys
are an error that lists the known ones; every value, text or from a file, is read by its setting's
declared type (``setting_value``: lists from ``1,2,2`` or ``[1,2,2]``, ``none`` for unset, finite numbers). Defaults reproduce the released trainer (Adam lr 1e-5, batch 1,
accumulation 2, EMA 0.995 every 10 steps from step 2000, 100 k steps) at the released 128³ width.
"""

from __future__ import annotations

import math
import sys
import types
import typing
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
    log_every: int = 10  # steps between log records and console progress lines
    val_every: int = 1000  # steps between validation losses (0: none); needs a validation split in the data
    val_timesteps: int = 4  # fixed t per validation case: T (k + 1/2) / val_timesteps, k = 0 .. val_timesteps - 1
    preview_every: int = 1000  # 0: no previews
    preview_steps: int = 10  # DDIM network passes per preview
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        for name in ("batch_size", "grad_accum", "ema_every", "save_every", "log_every", "preview_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.steps < 0 or self.workers < 0 or self.preview_every < 0 or self.val_every < 0:
            raise ConfigError("steps, workers, preview_every and val_every must be ≥ 0")
        if not 1 <= self.val_timesteps <= self.timesteps:
            raise ConfigError(f"val_timesteps = {self.val_timesteps} must lie in 1 .. timesteps ({self.timesteps})")
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


def parse_override(text: str) -> tuple[str, str]:
    """'key=value' -> (key, value text); the text is typed later by the setting it names (setting_value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. lr=2e-5 or channel_mult=1,2,2")
    return key.strip(), value.strip()


def build_run_config(file: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> RunConfig:
    """Defaults, then the file, then key=value overrides, then explicit flags (None = not given)."""
    settings: dict[str, Any] = read_config_file(file) if file else {}
    settings.update(parse_override(o) for o in overrides)
    settings.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(settings) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(f"unknown training settings {unknown}; known settings: {', '.join(KNOWN_KEYS)}")
    return RunConfig(**{k: setting_value(k, v) for k, v in settings.items()})


_HINTS = typing.get_type_hints(RunConfig)
_NONE_WORDS = ("none", "null")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_WANTED = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def setting_value(key: str, value: Any) -> Any:
    """A setting's value (text from --set, or what a TOML/YAML file holds) converted to its declared type.

    Lists take ``1,2,2`` or ``[1,2,2]`` (an empty list: ``[]``); settings that may be None take ``none``.
    Raises ConfigError naming the key, the value and the form wanted.
    """
    hint = _HINTS[key]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    optional = type(None) in options
    if optional:
        hint = next(a for a in options if a is not type(None))
    if optional and (value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS)):
        return None
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        wanted = f"a list of {'whole numbers, e.g. 1,2,2' if item is int else 'names, e.g. a,b'} or [{'1,2,2' if item is int else 'a,b'}]"
        try:
            return [_scalar(key, part, item, wanted, optional) for part in _list_items(key, value, wanted, optional)]
        except ConfigError:
            raise _bad(key, value, wanted, optional) from None
    return _scalar(key, value, hint, _WANTED[hint], optional)


def _list_items(key: str, value: Any, wanted: str, optional: bool) -> list[Any]:
    """The items of a list setting: a list as such, or text '1,2,2' / '[1,2,2]' split at the commas."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        raise _bad(key, value, wanted, optional)
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip() for part in text.split(",") if part.strip()]


def _scalar(key: str, value: Any, kind: type, wanted: str, optional: bool) -> Any:
    """One value as int, float, bool or str; text is read by that type (YAML reads 1e-5 as text)."""
    if kind is str:
        if not isinstance(value, str):
            raise _bad(key, value, wanted, optional)
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        return value[1:-1] if quoted else value
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if isinstance(value, (str, int)) and word in _TRUE_WORDS + _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise _bad(key, value, wanted, optional)
    if isinstance(value, bool):
        raise _bad(key, value, wanted, optional)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(key, value, wanted, optional) from None
    if not math.isfinite(number):
        raise _bad(key, value, f"a finite {wanted[2:]}", optional)
    if kind is int:
        if not number.is_integer():
            raise _bad(key, value, wanted, optional)
        return int(number)
    return number


def _bad(key: str, value: Any, wanted: str, optional: bool) -> ConfigError:
    """The error for a value that does not fit its setting."""
    return ConfigError(f"setting {key} = {value!r} must be {wanted}{' or none' if optional else ''}; fix it in --set "
                       "or the config file (`lungddpm train --print-config` lists every setting with its value)")
