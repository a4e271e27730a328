"""Fixtures of the Slicer-module tests: the module's Qt-free layer on real MRML classes from the slicer-core wheel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slicer_testing import new_mrml_context


@pytest.fixture(autouse=True)
def one_thread_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine subprocesses use one thread: test machines share their few cores (2-thread torch spin-waits there)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture()
def mrml_context() -> Iterator[object]:
    """A fresh scene with application, colour, volumes and segmentations logics wired up, as in Slicer."""
    context = new_mrml_context()
    yield context
    context.scene.Clear(True)
