"""Engine-test fixtures (the shared ones are in Testing/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_reference(golden_dir: Path) -> dict:
    """Outputs of the released code for the tiny checkpoint (forward, schedule, loss, AAS loop)."""
    return torch.load(golden_dir / "tiny-reference.pt", weights_only=True)
