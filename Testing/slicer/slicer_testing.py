"""Paths and guards shared by the Slicer-module tests (a uniquely named module: conftest.py is not importable
reliably when several test folders each have one)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "LungDDPMSlicer"
MAIN_SCRIPT = MODULE_DIR / "LungDDPMSlicer.py"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # LungDDPMSlicerLib, as Slicer puts the module's folder on sys.path


def _parameter_class() -> ast.ClassDef:
    """The @parameterNodeWrapper class of the main script, parsed (the script itself needs Slicer's GUI to import)."""
    (cls,) = [n for n in ast.parse(MAIN_SCRIPT.read_text()).body if isinstance(n, ast.ClassDef)
              and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list)]
    return cls


def parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the panel's parameter node (LungDDPMSlicerParameterNode)."""
    return {s.target.id: ast.unparse(s.annotation) for s in _parameter_class().body if isinstance(s, ast.AnnAssign)}


def parameter_defaults(namespace: dict[str, object]) -> dict[str, object]:
    """Field name -> default value of the panel's parameter node, its source evaluated in namespace (e.g. engine)."""
    return {s.target.id: eval(compile(ast.Expression(s.value), str(MAIN_SCRIPT), "eval"), dict(namespace))
            for s in _parameter_class().body if isinstance(s, ast.AnnAssign) and s.value is not None}


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


def new_mrml_context():
    """A new scene with application, colour, volumes and segmentations logics wired up, as in Slicer (skip without slicer-core)."""
    slicer = require_slicer_core()
    from LungDDPMSlicerLib.mrml import MrmlContext

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    app.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app)
    volumes.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(app)
    segmentations.SetMRMLScene(scene)
    return MrmlContext(scene, segmentations, app)


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
