"""Fixtures of the layout tests: the shared real CT, its lung mask, and the report script's independent trachea."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from lungddpm.io.volume import Volume, read_volume

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def report() -> ModuleType:
    """bench/lung_mask_report.py, whose reference trachea and comparison the tests share."""
    spec = importlib.util.spec_from_file_location("lung_mask_report", REPO / "bench" / "lung_mask_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_ct(real_ct_dir: Path) -> tuple[Volume, Volume]:
    """The shared real CT and its crude layout."""
    return read_volume(real_ct_dir / "ct.nii.gz"), read_volume(real_ct_dir / "layout-crude.nii.gz")
