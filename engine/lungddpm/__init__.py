"""lungddpm: semantic-layout-guided thoracic CT synthesis (Lung-DDPM / Lung-DDPM+).

Public names are imported on first use, so that torch-free tools (volumes, layouts, the lung mask)
work in environments where torch is not installed yet (e.g. a fresh 3D Slicer).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DeviceError": "errors",
    "InputError": "errors",
    "LungDDPMError": "errors",
    "ModelConfig": "config",
    "LungDDPM": "model",
    "load_model": "checkpoints",
    "save_checkpoint": "checkpoints",
    "make_generator": "sampling",
    "sample_aas": "sampling",
    "SynthesisResult": "synthesis",
    "synthesize": "synthesis",
    "write_result": "synthesis",
    "add_nodule": "layout",
    "lung_mask": "layout",
    "random_nodules": "layout",
    "validate_layout": "layout",
    "Volume": "volume",
    "read_volume": "volume",
    "write_volume": "volume",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lungddpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
