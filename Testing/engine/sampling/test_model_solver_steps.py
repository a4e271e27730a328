"""A model file's own default solver steps (ModelConfig.solver_steps): used by synthesize and generate when no
--steps is given, overridden by --steps, kept by checkpoints, absent (the project's defaults) in older files."""

from __future__ import annotations

import json

import pytest

from helpers import random_model
from lungddpm import ModelConfig, load_model, save_checkpoint
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.errors import ConfigError
from lungddpm.generation.export import dataset_folder
from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
from lungddpm.generation.shards import Shard
from lungddpm.io.volume import write_volume
from lungddpm.model.checkpoints import checkpoint_solver_steps
from lungddpm.sampling.options import DEFAULT_SOLVER_STEPS, GENERATE_SOLVER_STEPS
from lungddpm.synthesis.synthesize import synthesize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    """A small phantom with one nodule."""
    return make_phantom(seed=2, nodules=1)


def _steps(result) -> int:
    return int(result.metadata["steps"])


def test_synthesize_takes_the_models_own_steps_unless_steps_are_given(phantom, tmp_path):
    plain = random_model(in_channels=2, profile="released-patch")
    own = load_model(save_checkpoint(tmp_path / "own.pt", random_model(in_channels=2, profile="released-patch",
                                                                        solver_steps=7)), weights="model")
    assert own.config.solver_steps == 7 and checkpoint_solver_steps(tmp_path / "own.pt") == 7
    run = dict(sampler="dpmpp2m", device="cpu", seed=1)
    assert _steps(synthesize(phantom.ct, phantom.layout, plain, **run)) == DEFAULT_SOLVER_STEPS
    assert _steps(synthesize(phantom.ct, phantom.layout, own, **run)) == 7
    assert _steps(synthesize(phantom.ct, phantom.layout, own, steps=2, **run)) == 2
    assert _steps(synthesize(phantom.ct, phantom.layout, own, sampler="ddpm", device="cpu")) == own.config.timesteps


def test_solver_steps_are_validated_and_older_files_have_none(tmp_path):
    for bad in (0, 251):
        with pytest.raises(ConfigError, match=f"solver_steps {bad} must lie in 1..250"):
            ModelConfig(solver_steps=bad)
    assert checkpoint_solver_steps(DEMO_MODEL) is None  # a file written before the field: the project's defaults
    config = random_model(in_channels=2, profile="released-patch").config.to_dict()
    config.pop("solver_steps")
    assert ModelConfig.from_dict(config).solver_steps is None


def test_generate_takes_the_models_own_steps_and_resumes_with_them(tmp_path):
    refs = tmp_path / "refs"
    write_volume(make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=0).ct, refs / "chest0.nii.gz")
    demo = load_model(DEMO_MODEL, device="cpu")
    demo.config.solver_steps = 4
    path = save_checkpoint(tmp_path / "demo4.pt", demo)
    paths = dataset_folder(tmp_path / "out", 505, "Steps")
    nodules = NoduleRequest(1, (20.0, 25.0))  # the demo model sees ~10 mm voxels
    settings = GenerateSettings(variants=1, sampler="dpmpp2m", device="cpu", nodules=nodules)
    assert generate(read_references(refs), path, paths, settings, Shard(0, 1), progress="none")["made"] == 1
    record = json.loads(next((paths.root / "provenance").glob("*.json")).read_text())
    assert record["steps"] == 4 != GENERATE_SOLVER_STEPS
    again = generate(read_references(refs), path, paths, settings, Shard(0, 1), progress="none")  # no model loaded
    assert (again["made"], again["skipped"]) == (0, 1)
    with pytest.raises(ConfigError, match="other settings"):
        generate(read_references(refs), path, paths, GenerateSettings(variants=1, sampler="dpmpp2m", steps=5, device="cpu",
                                                                nodules=nodules),
                 Shard(0, 1), progress="none")
