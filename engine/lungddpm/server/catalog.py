"""The models a server offers: the bundled demo models plus every checkpoint in --models DIR, by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lungddpm.demo.demo import DEMO_MODEL, DEMO_NODULES_MODEL
from lungddpm.errors import ConfigError
from lungddpm.model.checkpoints import load_model
from lungddpm.model.config import ModelConfig

BUNDLED = {"demo": DEMO_MODEL, "demo-nodules": DEMO_NODULES_MODEL}  # the names the command line gives them too


@dataclass(frozen=True)
class Offered:
    """One model a client may name: its file, hash and configuration."""

    name: str
    path: Path
    sha256: str
    config: ModelConfig

    def describe(self) -> dict:
        """The model as GET /v1/models lists it."""
        return {"name": self.name, "sha256": self.sha256, "profile": self.config.profile, "size": self.config.image_size,
                "timesteps": self.config.timesteps, "attributes": list(self.config.attributes)}


def build_catalog(models_dir: str | Path | None = None) -> dict[str, Offered]:
    """The bundled models and each <name>.pt of models_dir (checked by loading it); ConfigError with the fix."""
    paths = dict(BUNDLED)
    if models_dir is not None:
        folder = Path(models_dir)
        if not folder.is_dir():
            raise ConfigError(f"--models {folder}: not a folder; give the folder that holds the server's .pt models")
        for path in sorted(folder.glob("*.pt")):
            if path.stem in paths:
                raise ConfigError(f"--models {folder}: {path.name} has the name of a bundled model; rename it")
            paths[path.stem] = path
    catalog = {}
    for name, path in paths.items():
        model = load_model(path, device="cpu")
        catalog[name] = Offered(name, path, model.source.sha256, model.config)
    return catalog


def offered(catalog: dict[str, Offered], name: object) -> Offered:
    """The model a job names; ConfigError listing the offered names otherwise."""
    if not isinstance(name, str) or name not in catalog:
        raise ConfigError(f"model {str(name)[:60]!r} is not offered by this server; choose one of "
                          f"{', '.join(sorted(catalog))} (GET /v1/models)")
    return catalog[name]
