"""Nodule attributes on the Slicer side: the model file's attributes read without torch, the engine's vocabulary,
the prompt, the segment tags and the panel's rules, checked against the engine itself."""

from __future__ import annotations

import pickle
import zipfile

import pytest
from slicer_testing import REPO  # also puts LungDDPMSlicerLib on sys.path
from LungDDPMSlicerLib import checkpoint_info, engine, models, nodule_attributes, panel

ENGINE_DIR = REPO / "engine"
MODELS = ENGINE_DIR / "lungddpm" / "models"


def test_model_attributes_read_without_torch_agree_with_the_engine(tiny_checkpoint, tmp_path):
    """demo-nodules takes texture, calcification, margin, spiculation (w = 3); demo and released checkpoints take none."""
    from lungddpm.model import checkpoints

    assert checkpoint_info.PROJECT_FORMAT == checkpoints.PROJECT_FORMAT
    for path in (MODELS / "demo-nodules.pt", MODELS / "demo-native-32.pt", tiny_checkpoint):
        config = checkpoints.load_model(path).config
        read = checkpoint_info.read_model_attributes(path)
        assert read.attributes == tuple(config.attributes)
        assert read.guidance_scale == (config.guidance_scale if config.attributes else None)
        assert read.solver_steps == config.solver_steps
    assert checkpoint_info.read_model_attributes(MODELS / "demo-nodules.pt") == \
        checkpoint_info.ModelAttributes(("texture", "calcification", "margin", "spiculation"), 3.0, 10)
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a zip")
    with pytest.raises(checkpoint_info.CheckpointReadError, match="notes.pt"):
        checkpoint_info.read_model_attributes(not_a_model)
    hostile = tmp_path / "hostile.pt"  # a pickle that would run code: refused, not executed
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("hostile/data.pkl", pickle.dumps({"format": "x", "hook": print}, protocol=2))
    with pytest.raises(checkpoint_info.CheckpointReadError, match=r"print is not expected"):
        checkpoint_info.read_model_attributes(hostile)


def test_panel_starts_from_the_model_files_own_solver_steps(tmp_path):
    """A model file's solver_steps becomes the panel's Steps; without one (or unreadable) the engine's default."""
    from lungddpm.model import checkpoints

    model = checkpoints.load_model(MODELS / "demo-native-32.pt")
    model.config.solver_steps = 7
    own = checkpoints.save_checkpoint(tmp_path / "own.pt", model)
    assert panel.default_steps(checkpoint_info.read_model_attributes(own)) == 7
    assert panel.default_steps(checkpoint_info.read_model_attributes(MODELS / "demo-native-32.pt")) == \
        engine.DEFAULT_SOLVER_STEPS == 3
    assert panel.default_steps(None) == engine.DEFAULT_SOLVER_STEPS


def test_panel_vocabulary_is_the_engines_and_the_prompt_uses_its_parser():
    """Each panel attribute is an engine characteristic, with 'unknown' and the engine's value names; prompt errors are the engine's."""
    from lungddpm.errors import InputError
    from lungddpm.layout import attributes

    schema = nodule_attributes.schema(ENGINE_DIR)
    assert schema is attributes
    assert set(nodule_attributes.PANEL_ATTRIBUTES) <= set(attributes.BY_FIELD)
    texture = nodule_attributes.choices(schema, "texture")
    assert texture[0] == nodule_attributes.Choice("unknown", None)
    assert [c.label for c in texture[1:]] == [f"{n} {v}" for n, v in enumerate(attributes.BY_FIELD["texture"].values, 1)]
    assert nodule_attributes.parse_prompt(schema, "12 mm part-solid spiculated nodule") == {"texture": 3, "spiculation": 5}
    with pytest.raises(InputError, match="'blue' is not in the nodule vocabulary"):
        nodule_attributes.parse_prompt(schema, "blue nodule")
    assert nodule_attributes.attribute_tags({"texture": 3, "margin": None, "spiculation": 4.5}) == \
        {"LungDDPM.attribute.texture": "3", "LungDDPM.attribute.spiculation": "4.5"}


SHAPES = nodule_attributes.shape_fields(ENGINE_DIR)


def test_shape_fields_are_the_engines():
    """The shape controls are the characteristics the engine's add-nodule paints (its SHAPE_FIELDS), read without torch."""
    from lungddpm.layout.nodules import SHAPE_FIELDS

    assert SHAPES == SHAPE_FIELDS == ("sphericity", "spiculation", "lobulation")
    assert set(SHAPES) <= set(nodule_attributes.PANEL_ATTRIBUTES)


def test_attribute_controls_follow_the_model_and_the_shape_ones_every_model():
    """The model's characteristics and, for every readable model, the shape ones are enabled; the panel says which is which."""
    demo_nodules = checkpoint_info.ModelAttributes(("texture", "calcification", "margin", "spiculation"), 3.0, 10)
    states = panel.attribute_states(demo_nodules, nodule_attributes.PANEL_ATTRIBUTES, SHAPES, "demo-nodules")
    assert states.enabled == {"texture": True, "margin": True, "spiculation": True, "lobulation": True,
                              "calcification": True, "sphericity": True, "malignancy": False}
    assert states.guidance_enabled and states.guidance_default == 3.0
    assert states.message == ("demo-nodules takes texture, calcification, margin, spiculation; sphericity and "
                              "lobulation shape the outline Add nodule paints; it does not know malignancy.")
    none = panel.attribute_states(checkpoint_info.ModelAttributes((), None), nodule_attributes.PANEL_ATTRIBUTES, SHAPES,
                                  "demo")
    assert none.enabled == {"texture": False, "margin": False, "spiculation": True, "lobulation": True,
                            "calcification": False, "sphericity": True, "malignancy": False}
    assert not none.guidance_enabled and none.guidance_default is None
    assert none.message == ("demo takes no nodule attributes: its nodules follow the layout only; sphericity, "
                            "spiculation and lobulation shape the outline Add nodule paints.")
    every = panel.attribute_states(checkpoint_info.ModelAttributes(nodule_attributes.PANEL_ATTRIBUTES, 2.0),
                                   nodule_attributes.PANEL_ATTRIBUTES, SHAPES, "all")
    assert all(every.enabled.values()) and every.message == f"all takes {', '.join(nodule_attributes.PANEL_ATTRIBUTES)}."
    unknown = panel.attribute_states(None, nodule_attributes.PANEL_ATTRIBUTES, SHAPES, "Lung-DDPM+",
                                     "the file is not here yet")
    assert not any(unknown.enabled.values()) and "the file is not here yet" in unknown.message


def test_add_nodule_sends_every_enabled_control():
    """With a no-attribute model Add nodule sends the known shape values (0: unknown), with demo-nodules its own too."""
    stored = '{"texture": 5, "lobulation": 4, "sphericity": 0, "spiculation": 2, "malignancy": 3}'
    none = panel.attribute_states(checkpoint_info.ModelAttributes((), None), nodule_attributes.PANEL_ATTRIBUTES, SHAPES,
                                  "demo")
    assert panel.add_nodule_attributes(stored, none) == {"lobulation": 4, "spiculation": 2}
    demo_nodules = panel.attribute_states(checkpoint_info.ModelAttributes(("texture", "spiculation"), 3.0),
                                          nodule_attributes.PANEL_ATTRIBUTES, SHAPES, "demo-nodules")
    assert panel.add_nodule_attributes(stored, demo_nodules) == {"texture": 5, "lobulation": 4, "spiculation": 2}


def test_synthesize_sends_only_what_the_model_takes_and_says_what_it_leaves_out():
    """Tags the model does not know (lobulation, sphericity for demo-nodules) are left out, and the log line says why."""
    takes = ("texture", "calcification", "margin", "spiculation")
    sent, left_out = panel.synthesis_attributes([{"texture": 5, "lobulation": 4}, {}, {"sphericity": 1, "lobulation": 2,
                                                                                       "spiculation": 3}], takes)
    assert sent == [{"texture": 5}, {}, {"spiculation": 3}] and left_out == ["lobulation", "sphericity"]
    assert panel.synthesis_attributes([{"texture": 5}], takes) == ([{"texture": 5}], [])
    assert panel.left_out_message(["lobulation"], SHAPES, "demo-nodules.pt") == \
        ("demo-nodules.pt does not take lobulation; Synthesize leaves it out (lobulation shapes the outline Add nodule "
         "paints)")
    assert panel.left_out_message(["sphericity", "lobulation", "malignancy"], SHAPES, "m") == \
        ("m does not take sphericity, lobulation and malignancy; Synthesize leaves them out (sphericity and lobulation "
         "shape the outline Add nodule paints)")
    assert panel.left_out_message(["malignancy"], SHAPES, "m") == "m does not take malignancy; Synthesize leaves it out"


def test_a_prompt_fills_only_the_enabled_controls():
    """For a no-attribute model the prompt fills the shape controls; the rest is reported as not taken."""
    none = panel.attribute_states(checkpoint_info.ModelAttributes((), None), nodule_attributes.PANEL_ATTRIBUTES, SHAPES,
                                  "demo")
    parsed = nodule_attributes.parse_prompt(nodule_attributes.schema(ENGINE_DIR), "part-solid spiculated nodule")
    assert panel.prompt_values(parsed, none) == ('{"spiculation": 5}', ["texture"])
    unknown = panel.attribute_states(None, nodule_attributes.PANEL_ATTRIBUTES, SHAPES, "x", "not here")
    stored, ignored = panel.prompt_values(parsed, unknown)
    assert stored == "{}" and sorted(ignored) == ["spiculation", "texture"]


def test_persisted_settings_round_trip_and_stale_values_are_dropped():
    """Model, device, sampler, steps and precision come back typed; values no longer offered keep the default."""
    values = {"modelName": "demo-nodules", "device": "cpu", "sampler": "ddim", "steps": 7, "precision": "bf16",
              "seed": 4}
    stored = panel.stored_settings(values)
    assert stored == {"modelName": "demo-nodules", "device": "cpu", "sampler": "ddim", "steps": "7", "precision": "bf16"}
    offered = {"modelName": ["demo-native-32", "demo-nodules"], "device": engine.DEVICES, "sampler": engine.SAMPLERS,
               "precision": panel.offered_precisions(False)}
    assert panel.restored_settings(stored, offered) == {k: v for k, v in values.items() if k != "seed"}
    stale = {"modelName": "withdrawn", "device": "tpu", "sampler": None, "steps": "0", "precision": "fp16"}
    assert panel.restored_settings(stale, offered) == {}
    # a version whose default was fp32 stored it: it stays fp32 (a choice made then is not changed); never stored: auto
    assert panel.restored_settings({"precision": "fp32"}, offered) == {"precision": "fp32"}
    assert panel.restored_settings({"precision": None}, offered) == {} and offered["precision"][0] == engine.DEFAULT_PRECISION
    assert set(offered["modelName"]) <= {e.name for e in models.load_model_list(REPO / "Resources" / "models.json")}


def test_automatic_precision_is_the_default_and_says_what_the_engine_runs_here():
    """The precision combo starts at Automatic; its label names what the engine's own rule picks on this computer."""
    from lungddpm.runtime import precision

    assert panel.CHOICES["precision"][0] == engine.DEFAULT_PRECISION == precision.AUTO
    here = {"this CPU": precision.auto_precision("cpu")}
    expected = "bfloat16" if precision.cpu_has_native_bf16() else "float32"
    assert panel.choice_labels(here)["precision"]["auto"] == f"Automatic ({expected} on this CPU)"
    both = panel.choice_labels({"the CUDA GPU": "fp32", "this CPU": "bf16"})
    assert both["precision"]["auto"] == "Automatic (float32 on the CUDA GPU, bfloat16 on this CPU)"
    assert {k: v for k, v in both["precision"].items() if k != "auto"} == \
        {k: v for k, v in panel.CHOICE_LABELS["precision"].items() if k != "auto"}
    assert both["sampler"] == panel.CHOICE_LABELS["sampler"]
    assert precision.auto_precision("cuda") == precision.auto_precision("mps") == "fp32"
    module = nodule_attributes.engine_module(engine.find_engine_dir(REPO / "LungDDPMSlicer"), "lungddpm.runtime.precision")
    assert module.auto_precision("cpu") == precision.auto_precision("cpu")  # what the widget imports, without torch
