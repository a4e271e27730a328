"""lungddpm: semantic-layout-guided thoracic CT synthesis (Lung-DDPM / Lung-DDPM+)."""

__version__ = "0.1.0"

from .checkpoints import load_model, save_checkpoint  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .errors import CheckpointError, ConfigError, DeviceError, InputError, LungDDPMError  # noqa: E402
from .model import LungDDPM  # noqa: E402
from .sampling import make_generator, sample_aas  # noqa: E402

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "InputError",
    "LungDDPM",
    "LungDDPMError",
    "ModelConfig",
    "load_model",
    "make_generator",
    "sample_aas",
    "save_checkpoint",
]
