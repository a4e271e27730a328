"""lungddpm: semantic-layout-guided thoracic CT synthesis (Lung-DDPM / Lung-DDPM+)."""

__version__ = "0.1.0"

from .checkpoints import load_model, save_checkpoint  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .errors import CheckpointError, ConfigError, DeviceError, InputError, LungDDPMError  # noqa: E402
from .layout import add_nodule, lung_mask, random_nodules, validate_layout  # noqa: E402
from .model import LungDDPM  # noqa: E402
from .sampling import make_generator, sample_aas  # noqa: E402
from .synthesize import SynthesisResult, synthesize, write_result  # noqa: E402
from .volume import Volume, read_volume, write_volume  # noqa: E402

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
    "add_nodule",
    "lung_mask",
    "random_nodules",
    "validate_layout",
    "SynthesisResult",
    "synthesize",
    "write_result",
    "Volume",
    "read_volume",
    "write_volume",
]
