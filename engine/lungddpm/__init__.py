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
    "ModelConfig": "model.config",
    "LungDDPM": "model.lungddpm",
    "load_model": "model.checkpoints",
    "save_checkpoint": "model.checkpoints",
    "make_generator": "sampling.noise",
    "sample_aas": "sampling.ancestral",
    "SynthesisResult": "synthesis.synthesize",
    "synthesize": "synthesis.synthesize",
    "write_result": "synthesis.synthesize",
    "NoduleAttributes": "layout.attributes",
    "parse_prompt": "layout.attributes",
    "render_prompt": "layout.attributes",
    "add_nodule": "layout.nodules",
    "layout_from_segmentation": "layout.segmentation",
    "lung_mask": "layout.lung_mask",
    "lung_report": "layout.lung_report",
    "random_nodules": "layout.nodules",
    "validate_layout": "layout.labels",
    "Volume": "io.volume",
    "read_volume": "io.volume",
    "write_volume": "io.volume",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lungddpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
