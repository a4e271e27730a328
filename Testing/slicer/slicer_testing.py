"""Paths and guards shared by the Slicer-module tests (a uniquely named module: conftest.py is not importable
reliably when several test folders each have one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "LungDDPMSlicer"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # LungDDPMSlicerLib, as Slicer puts the module's folder on sys.path


def require_slicer_core(module_level: bool = False) -> ModuleType:
    """The `slicer` module of the slicer-core wheel, or skip (the test or the whole module) with the install line."""
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is None or not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not importable: pip install slicer-core (real MRML classes, headless)",
                    allow_module_level=module_level)
    return slicer


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (zombies are read from /proc where it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())
