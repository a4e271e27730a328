"""Attribute requests in synthesis: per nodule in patch mode, checked against the model and the layout, in provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import random_model
from lungddpm.demo.phantom import make_phantom
from lungddpm.errors import InputError
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE
from lungddpm.layout.sidecar import NoduleRecord, component_centres_mm, layout_records, nodule_components
from lungddpm.synthesis.synthesize import synthesize

pytestmark = pytest.mark.usefixtures("one_thread")
GLASS, SOLID = NoduleAttributes(texture=1), NoduleAttributes(texture=5)


@pytest.fixture(scope="module")
def case():
    """A phantom with two nodules and a random attribute patch model (16³ cubes, texture + margin)."""
    ph = make_phantom(seed=1, nodules=2)
    model = random_model(attributes=("texture", "margin"), guidance_scale=3.0, in_channels=2, profile="released-patch")
    return ph, model


def _run(case, **kwargs):
    ph, model = case
    return synthesize(ph.ct, ph.layout, model, sampler="ddim", steps=2, device="cpu", seed=4, **kwargs)


def test_each_cube_is_conditioned_on_its_own_nodule(case):
    ph, _ = case
    components, count = nodule_components(ph.layout)
    assert count == 2
    centres = component_centres_mm(ph.layout, components, count)
    records = [NoduleRecord(1, centres[0], GLASS), NoduleRecord(2, centres[1], SOLID)]
    mixed = _run(case, attributes=records)
    glass, solid = _run(case, attributes=GLASS), _run(case, attributes=SOLID)
    used = {u["nodule"]: u["attributes"] for u in json.loads(mixed.metadata["nodule_attributes"])}
    assert used == {1: {"texture": 1.0}, 2: {"texture": 5.0}}
    assert mixed.metadata["guidance"] == "3" and mixed.metadata["attribute_schema"] == "texture,margin"
    first, second = components == 1, components == 2
    assert np.array_equal(mixed.image.array[first], glass.image.array[first])
    assert np.array_equal(mixed.image.array[second], solid.image.array[second])
    assert not np.array_equal(glass.image.array[first], solid.image.array[first])  # the attribute changed the nodule


def test_guidance_scale_changes_the_sample_and_defaults_to_the_models(case):
    default, explicit, other = _run(case, attributes=SOLID), _run(case, attributes=SOLID, guidance=3.0), \
        _run(case, attributes=SOLID, guidance=1.0)
    assert np.array_equal(default.image.array, explicit.image.array)
    assert not np.array_equal(default.image.array, other.image.array) and other.metadata["guidance"] == "1"


def test_requests_the_model_or_layout_cannot_honour_are_refused(case):
    ph, _ = case
    with pytest.raises(InputError, match="knows the attributes texture, margin; leave out malignancy"):
        _run(case, attributes=NoduleAttributes(texture=5, malignancy=4))
    layout_mm = layout_records(ph.layout)[0].attributes.diameter_mm
    with pytest.raises(InputError, match="the layout sets the size"):
        _run(case, attributes=NoduleAttributes(texture=5, diameter_mm=round(layout_mm * 2, 1)))
    _run(case, attributes=NoduleAttributes(texture=5, diameter_mm=layout_mm))  # the layout's own size is fine
    plain = random_model(in_channels=2, profile="released-patch")
    with pytest.raises(InputError, match="in-memory model takes no nodule attributes; leave out --nodule"):
        synthesize(ph.ct, ph.layout, plain, sampler="ddim", steps=2, device="cpu", attributes=SOLID)
    with pytest.raises(InputError, match="--guidance"):
        synthesize(ph.ct, ph.layout, plain, sampler="ddim", steps=2, device="cpu", guidance=2.0)
    assert "nodule_attributes" not in synthesize(ph.ct, ph.layout, plain, sampler="ddim", steps=2, device="cpu").metadata


def test_sidecar_records_leave_unknown_characteristics_unused(case):
    ph, _ = case
    records = ph.nodule_records() or layout_records(ph.layout, {1: NoduleAttributes(texture=1, calcification=3)})
    used = json.loads(_run(case, attributes=records).metadata["nodule_attributes"])
    assert all(set(u["attributes"]) <= {"texture", "margin"} for u in used)
