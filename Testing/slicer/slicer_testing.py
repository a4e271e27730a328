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


def add_volume(scene, cls: str, name: str, array, matrix):
    """A volume node of class cls from a (k, j, i) array and an IJK-to-RAS matrix, built with plain VTK calls."""
    import numpy as np
    import vtk
    from vtk.util import numpy_support

    from LungDDPMSlicerLib.mrml import array_to_matrix

    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node = scene.AddNewNodeByClass(cls, name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(array_to_matrix(matrix))
    node.CreateDefaultDisplayNodes()
    return node


def poll_until_running(job, timeout_s: float = 120) -> None:
    """Poll a started job until it has done its first step (or ended, or timeout_s passed)."""
    import time

    deadline = time.monotonic() + timeout_s
    while job.step == 0 and job.active and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.1)
