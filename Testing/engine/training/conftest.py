"""Training-test fixtures: phantom case folders and their 16³ native preparation, shared by the training tests."""

from __future__ import annotations

import numpy as np
import pytest

from lungddpm.demo.phantom import make_phantom
from lungddpm.io.volume import write_volume
from lungddpm.training.prepare import prepare_dataset


@pytest.fixture(scope="session")
def phantom_cases(tmp_path_factory):
    """Three phantom case folders (CT + nodule mask)."""
    root = tmp_path_factory.mktemp("phantoms")
    for n in range(3):
        ph = make_phantom(seed=n, nodules=1)
        write_volume(ph.ct, root / f"ph{n}" / "ct.nrrd")
        write_volume(ph.layout.with_array((ph.layout.array == 2).astype(np.uint8)), root / f"ph{n}" / "nodules.nrrd")
    return root


@pytest.fixture(scope="session")
def prepared16(phantom_cases, tmp_path_factory):
    """The phantoms prepared at 16³ in the native profile, all in the train split."""
    out = tmp_path_factory.mktemp("prepared16")
    prepare_dataset([phantom_cases], out, size=16, val_fraction=0.0)
    return out


@pytest.fixture(scope="session")
def prepared16_val(phantom_cases, tmp_path_factory):
    """The phantoms at 16³ in the native profile with a validation split: one train case, two validation cases."""
    out = tmp_path_factory.mktemp("prepared16_val")
    prepare_dataset([phantom_cases], out, size=16, val_fraction=2 / 3)
    return out
