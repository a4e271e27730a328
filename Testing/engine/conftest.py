"""Engine-test fixtures (the shared ones are in Testing/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_reference(golden_dir: Path) -> dict:
    """Outputs of the released code for the tiny checkpoint (forward, schedule, loss, AAS loop)."""
    return torch.load(golden_dir / "tiny-reference.pt", weights_only=True)


@pytest.fixture
def one_thread():
    """One torch thread for the test (the test machine's cores are shared), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
