"""Prepared samples with their nodule attributes: the largest nodule's, read from the manifest; condition dropout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lungddpm.cli import main
from lungddpm.demo.phantom import make_phantom
from lungddpm.io.volume import write_volume
from lungddpm.layout.labels import NODULE
from lungddpm.layout.sidecar import write_sidecar
from lungddpm.model.checkpoints import load_model
from lungddpm.training.data import PreparedCases, load_cases, sample_attributes
from lungddpm.training.objective import drop_attributes
from lungddpm.training.prepare import prepare_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTURES = {"glass": 1, "solid": 5}


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    """Two phantoms with one described nodule each (ground-glass, solid), their sidecars, prepared as 16³ cubes."""
    root = tmp_path_factory.mktemp("described")
    for n, (name, texture) in enumerate(TEXTURES.items()):
        plain = make_phantom(seed=n, nodules=1)
        spec = {"center_lps_mm": plain.nodules[0]["center_lps_mm"], "diameter_mm": 12.0,
                "attributes": {"texture": texture, "margin": 5}}
        ph = make_phantom(seed=n, nodules=[spec])
        mask = root / "cases" / name / "nodules.nrrd"
        write_volume(ph.ct, mask.with_name("ct.nrrd"))
        write_volume(ph.layout.with_array((ph.layout.array == NODULE).astype(np.uint8)), mask)
        write_sidecar(mask, ph.nodule_records())
    prepare_dataset([root / "cases"], root / "prepared", profile="released-patch", size=16, val_fraction=0.0)
    return root / "prepared"


def test_sample_attributes_are_the_largest_nodules():
    small = {"attributes": {"texture": 1, "diameter_mm": 6.0}}
    large = {"attributes": {"texture": 5, "diameter_mm": 14.0}}
    assert sample_attributes({"nodules": [small, large]}) == large["attributes"]
    assert sample_attributes({"nodules": [large, {"attributes": {"texture": 3, "diameter_mm": 14.0}}]})["texture"] == 5
    assert sample_attributes({"nodules": []}) == {} and sample_attributes({}) == {}


def test_each_cube_carries_its_nodules_attributes_in_the_models_schema(described):
    cases, _ = load_cases([str(described)])
    by_case = {c.case_id: c for c in cases}
    for name, texture in TEXTURES.items():
        index = cases.index(by_case[name])
        _, _, attributes, _ = PreparedCases(cases, ("texture", "spiculation", "malignancy"))[(index, 0)]
        assert attributes[0] == texture and attributes[1] == 1  # the phantom draws spiculation plain (1)
        assert math.isnan(attributes[2])  # malignancy: the phantom does not draw it, unknown
        assert PreparedCases(cases)[(index, 0)][2].shape == (0,)  # a model without attributes gets none


def test_condition_dropout_rate_and_determinism():
    positions = torch.arange(4000)
    attributes = torch.ones(4000, 2)
    dropped = drop_attributes(7, positions, attributes, 0.15)
    rate = torch.isnan(dropped[:, 0]).float().mean().item()
    assert 0.13 < rate < 0.17 and torch.equal(torch.isnan(dropped[:, 0]), torch.isnan(dropped[:, 1]))  # whole vectors
    again = drop_attributes(7, positions[100:200], attributes[100:200], 0.15)
    assert torch.equal(torch.isnan(again), torch.isnan(dropped[100:200]))  # by position, not by batch
    assert not torch.isnan(drop_attributes(7, positions, attributes, 0.0)).any()


def test_train_an_attribute_patch_model(described, tmp_path):
    out = tmp_path / "run"
    settings = ["profile=released-patch", "image_size=16", "channel_mult=[1,2]", "attention_resolutions=[8]",
                "num_channels=32", "timesteps=8", "lr=1e-3", "preview_every=0", "tensorboard=false", "workers=0",
                "grad_accum=1", "batch_size=2", 'attributes=["texture","margin"]', "guidance_scale=2.5"]
    assert main(["train", "--data", str(described), "--output", str(out), "--steps", "3", "--threads", "1",
                 *[a for s in settings for a in ("--set", s)]]) == 0
    model = load_model(out / "latest.pt", weights="model")
    assert model.config.attributes == ("texture", "margin") and model.config.guidance_scale == 2.5
    assert json.loads((out / "config.json").read_text())["cond_dropout"] == 0.15  # the default
    embed = model.denoise_fn.attribute_embed.tables[0].weight
    torch.manual_seed(0)  # the run's initial weights (seed 0)
    initial = type(model)(model.config).denoise_fn.attribute_embed.tables[0].weight
    moved = (embed - initial).abs().amax(dim=1) > 0
    assert moved[[1, 5]].all() and not moved[[2, 3, 4]].any()  # the textures seen (1, 5) trained, the others not
