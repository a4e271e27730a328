"""Fixtures shared by every test folder: the project's ../shared folder (skip with a message where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`) each worker and its subprocesses use one OpenMP/torch thread: N workers, N cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # read by torch at its import, which comes after this hook


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (golden tensors, real CT); tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: clone the repository beside the project's shared/ folder to run this test")
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    """../shared/golden: tensors produced by the released Lung-DDPM code."""
    path = shared_dir / "golden"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(golden_dir: Path) -> Path:
    """The tiny released-format checkpoint (32³, T = 20, 3 input channels, float16 U-Net weights)."""
    return golden_dir / "tiny-official-checkpoint-fp16.pt"


@pytest.fixture(scope="session")
def real_ct_dir(shared_dir: Path) -> Path:
    """../shared/data/lung-pet-ct-dx-A0001: one real chest CT (DICOM series and NIfTI) with a crude layout."""
    path = shared_dir / "data" / "lung-pet-ct-dx-A0001"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real CT test data lives in the project's shared/ folder")
    return path
