"""Model configuration: everything needed to rebuild a network and its diffusion schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from lungddpm.errors import ConfigError
from lungddpm.layout.attributes import BY_FIELD

# Profiles: how a model sees a CT (synthesis.profiles, synthesis.patches). A checkpoint records its profile.
RELEASED_PROFILE = "released"  # Lung-DDPM as released: whole volume, file axes, per-slice min-max
NATIVE_PROFILE = "native"  # the project's models: lung-centred, patient-aligned, fixed HU window
PATCH_PROFILE = "released-patch"  # Lung-DDPM+: nodule-centred cubes, nodule channel only, per-slice min-max
NATIVE_PATCH_PROFILE = "native-patch"  # nodule cubes as Lung-DDPM+, with the native fixed HU window (invertible)
PATCH_PROFILES = (PATCH_PROFILE, NATIVE_PATCH_PROFILE)
PROFILE_NAMES = (NATIVE_PROFILE, RELEASED_PROFILE, *PATCH_PROFILES)
ATTENTIONS = ("sdpa", "legacy")

# channel_mult the released code picks from the image size when none is given
RELEASED_CHANNEL_MULT = {32: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


@dataclass
class ModelConfig:
    """A Lung-DDPM network + schedule; defaults are the released 128³ Lung-DDPM."""

    image_size: int = 128
    num_channels: int = 64
    num_res_blocks: int = 1
    channel_mult: tuple[int, ...] = (1, 1, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    in_channels: int = 3
    out_channels: int = 1
    timesteps: int = 250
    schedule: str = "cosine"
    profile: str = RELEASED_PROFILE
    attention: str = ATTENTIONS[0]
    dropout: float = 0.0
    patch_spacing_mm: float | None = None  # patch models: isotropic cube voxel size; None = the CT's own voxels
    attributes: tuple[str, ...] = ()  # LIDC characteristics the model is conditioned on (model.conditioning); () = none
    guidance_scale: float = 1.0  # default classifier-free guidance w of an attribute model (1 = plain conditional)
    solver_steps: int | None = None  # the model's own default solver steps (measured against its ddpm); None: the project's

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.attributes = tuple(str(a) for a in self.attributes)
        self.validate()

    @property
    def cond_channels(self) -> int:
        """Number of layout channels concatenated to the noisy image (2 for Lung-DDPM, 1 for Lung-DDPM+)."""
        return self.in_channels - self.out_channels

    @property
    def is_patch_model(self) -> bool:
        """Whether the model synthesises nodule cubes (Lung-DDPM+) rather than whole volumes."""
        return self.profile in PATCH_PROFILES

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsampling rates at which attention blocks sit (image_size // resolution, as released)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def validate(self) -> None:
        """Raise ConfigError for a configuration no network can be built from."""
        levels = len(self.channel_mult) - 1
        if self.image_size % (2**levels):
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2**{levels} (the U-Net downsamples "
                f"{levels} times for channel_mult {self.channel_mult}); choose a multiple of {2**levels}"
            )
        if self.num_channels % 32 or any((self.num_channels * m) % 32 for m in self.channel_mult):
            raise ConfigError(
                f"num_channels {self.num_channels} x channel_mult {self.channel_mult} must be multiples of 32 "
                "(GroupNorm uses 32 groups); use e.g. 32, 64 or 128"
            )
        for ds in self.attention_ds:
            if ds < 1 or ds & (ds - 1):
                raise ConfigError(
                    f"attention_resolutions {self.attention_resolutions} with image_size {self.image_size} give "
                    f"downsample rate {ds}, which is not a power of two; pick divisors of image_size"
                )
        if self.in_channels <= self.out_channels:
            raise ConfigError(f"in_channels {self.in_channels} must exceed out_channels {self.out_channels} (layout channels)")
        if self.timesteps < 2:
            raise ConfigError(f"timesteps {self.timesteps} must be at least 2")
        if self.schedule != "cosine":
            raise ConfigError(f"schedule {self.schedule!r} is not supported; use 'cosine' (the released schedule)")
        if self.patch_spacing_mm is not None and not self.patch_spacing_mm > 0:
            raise ConfigError(f"patch_spacing_mm {self.patch_spacing_mm} must be a positive voxel size in mm, or None")
        if self.profile not in PROFILE_NAMES:
            raise ConfigError(f"profile {self.profile!r} is unknown; choose one of {PROFILE_NAMES}")
        if self.is_patch_model and self.cond_channels != 1:
            raise ConfigError(f"profile {self.profile} (Lung-DDPM+ cubes) has one layout channel (the nodule): in_channels must "
                              f"be out_channels + 1 = {self.out_channels + 1}, not {self.in_channels}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention {self.attention!r} must be one of {ATTENTIONS}")
        unknown = [a for a in self.attributes if a not in BY_FIELD]
        if unknown or len(set(self.attributes)) != len(self.attributes):
            raise ConfigError(f"model attributes {list(self.attributes)}: each must be one LIDC characteristic, once "
                              f"({', '.join(BY_FIELD)})")
        if not self.guidance_scale >= 0:
            raise ConfigError(f"guidance_scale {self.guidance_scale} must be >= 0 (1 = plain conditional sampling)")
        if self.solver_steps is not None and not 1 <= self.solver_steps <= self.timesteps:
            raise ConfigError(f"solver_steps {self.solver_steps} must lie in 1..{self.timesteps} (timesteps), or be None "
                              "for the project's defaults")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (lists, ints, strings) safe for torch.save with weights_only loading."""
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["attributes"] = list(self.attributes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild a config from to_dict() output; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model configuration keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)


def released_lung_ddpm(image_size: int = 128, **overrides: Any) -> ModelConfig:
    """The released Lung-DDPM configuration (3 input channels, T = 250) at a given size."""
    mult = RELEASED_CHANNEL_MULT.get(image_size)
    if mult is None:
        raise ConfigError(f"the released code has no channel_mult for image_size {image_size}; pass channel_mult=")
    return ModelConfig(image_size=image_size, channel_mult=mult, **overrides)


def released_lung_ddpm_plus(**overrides: Any) -> ModelConfig:
    """The released Lung-DDPM+ patch configuration (64³, 2 input channels)."""
    base = dict(image_size=64, channel_mult=(1, 2, 3, 4), in_channels=2, profile=PATCH_PROFILE)
    base.update(overrides)
    return ModelConfig(**base)
