"""Fixtures of the Slicer-module tests: the module's Qt-free layer on real MRML classes from the slicer-core wheel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from slicer_testing import SHARED, require_slicer_core


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (golden checkpoint, real CT); tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: clone the repository beside the project's shared/ folder to run this test")
    return SHARED


@pytest.fixture(scope="session")
def golden_checkpoint(shared_dir: Path) -> Path:
    """The tiny released-format checkpoint (32³, T = 20, 3 input channels)."""
    path = shared_dir / "golden" / "tiny-official-checkpoint-fp16.pt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def real_ct_dir(shared_dir: Path) -> Path:
    """../shared/data/lung-pet-ct-dx-A0001: one real chest CT (NIfTI) with a crude layout."""
    path = shared_dir / "data" / "lung-pet-ct-dx-A0001"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real CT test data lives in the project's shared/ folder")
    return path


@pytest.fixture(autouse=True)
def one_thread_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine subprocesses use one thread: test machines share their few cores (2-thread torch spin-waits there)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture()
def mrml_context() -> Iterator[object]:
    """A fresh scene with application, colour, volumes and segmentations logics wired up, as in Slicer."""
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
    context = MrmlContext(scene, segmentations, app)
    yield context
    scene.Clear(True)
