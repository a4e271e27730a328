"""Every control of the panel through the engine command it builds: one table, one real engine run per control.

Each entry of CONTROLS sets parameters of the panel (the fields of LungDDPMSlicerParameterNode, read from the main
script, plus the prompt box) away from a scenario's values and runs what the panel runs: the model from the model
list or the chosen file, the attribute combos or the prompt as segment tags (panel.add_nodule_attributes,
panel.prompt_values; Synthesize sends those the model takes, panel.synthesis_attributes), the sampling options
(panel.sampling_options), one seed per variant (panel.variant_seeds), a jobs.SynthesisJob on one engine worker
shared by the module (as the Logic's), the real engine, the result imported into the scene; the nodule controls
run the engine's add-nodule as the Add-nodule button does, with the combos' values the panel enables for the
chosen model (the shape ones for every model). The check shows that the result differs from the scenario's own
run or that the provenance records the value, so a control whose value does not reach the engine (or that the
engine ignores) fails its entry. test_every_panel_parameter_has_an_entry fails for a parameter without one; the
tests after the table check the shape attributes (painted for any model, never sent to a model without them).
Cheap: the panel's Sample Data phantom, a random 8³ model with T = 8, the bundled demo-nodules for the patch and
attribute controls, one engine process for the whole module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from slicer_testing import MODULE_DIR, REPO, new_mrml_context, parameter_defaults, parameter_fields, require_slicer_core

require_slicer_core(module_level=True)

from LungDDPMSlicerLib import (checkpoint_info, engine, jobs, models, mrml, nodule_attributes,  # noqa: E402
                               panel, sample, worker)
from lungddpm.runtime.precision import auto_precision  # noqa: E402

OTHER_CHECKPOINT = "__other__"  # the model combo's "other checkpoint" entry (LungDDPMSlicer.OTHER_CHECKPOINT)
ENGINE_DIR = engine.find_engine_dir(MODULE_DIR)
MODEL_LIST = models.load_model_list(MODULE_DIR.parent / "Resources" / "models.json")
PROMPT = "ground-glass nodule with marked spiculation"
DESCRIBED = {"texture": 1, "spiculation": 5}


@dataclass
class Result:
    """One run as the panel would make it: outputs (or the error), each output's provenance and voxels."""

    error: str = ""
    outputs: list = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    voxels: list[np.ndarray] = field(default_factory=list)
    total: int = 0
    kept: list[str] = field(default_factory=list)  # files left in the work folder
    mask: np.ndarray | None = None  # add-nodule: the new segment
    model: Path | None = None  # the checkpoint file the run was given
    log: list[str] = field(default_factory=list)  # the job's log lines
    sidecar: dict | None = None  # the nodule sidecar sent to the engine (kept work folders only)
    tags: dict[str, float] = field(default_factory=dict)  # add-nodule: the new segment's attribute tags


@dataclass(frozen=True)
class Control:
    """One panel control: the scenario it changes, the parameter values it sets, and the check of both runs."""

    scenario: str
    values: dict
    check: Callable[[Result, Result], None]


def differs(default: Result, changed: Result) -> None:
    """Both runs succeed and the changed run's image (or new nodule segment) differs from the default's."""
    assert not default.error and not changed.error, (default.error, changed.error)
    if default.mask is not None:
        assert not np.array_equal(default.mask, changed.mask)
    else:
        assert not np.array_equal(default.voxels[0], changed.voxels[0])


OTHER_PRECISION = "fp32" if auto_precision("cpu") == "bf16" else "bf16"  # not what the default (auto) runs here


def records(key: str, value: str) -> Callable[[Result, Result], None]:
    """The changed run succeeds, its provenance records the value under key, and the default's does not."""
    def check(default: Result, changed: Result) -> None:
        assert not changed.error, changed.error
        assert changed.provenance[0].get(key) == value and default.provenance[0].get(key) != value, \
            (default.provenance[0].get(key), changed.provenance[0].get(key))
    return check


def both(*checks: Callable[[Result, Result], None]) -> Callable[[Result, Result], None]:
    """Every check holds."""
    def check(default: Result, changed: Result) -> None:
        for one in checks:
            one(default, changed)
    return check


def cuda_device(default: Result, changed: Result) -> None:
    """Device 'cuda' reaches the engine: recorded where a CUDA GPU is usable, else refused with the engine's message."""
    import torch

    if torch.cuda.is_available():
        assert changed.provenance[0]["device"].startswith("cuda"), changed.error
    else:
        assert "no CUDA GPU is usable" in changed.error and not default.error, changed.error
    assert default.provenance[0]["device"] == "cpu"


def hashes_its_model(default: Result, changed: Result) -> None:
    """Each run's provenance holds the SHA-256 of the model file that run was given; the two files differ."""
    for result in (default, changed):
        assert result.provenance[0]["model_sha256"] == hashlib.sha256(result.model.read_bytes()).hexdigest()
    assert default.provenance[0]["model_sha256"] != changed.provenance[0]["model_sha256"]


def variants(default: Result, changed: Result) -> None:
    """Two variants: two outputs with seeds seed and seed + 1, different images; the default makes one."""
    assert len(default.outputs) == 1 and len(changed.outputs) == 2, changed.error
    assert [p["seed"] for p in changed.provenance] == ["0", "1"]
    assert np.array_equal(changed.voxels[0], default.voxels[0]) and not np.array_equal(*changed.voxels)


def keeps_files(default: Result, changed: Result) -> None:
    """The work folder with the engine's inputs and outputs stays; by default it is deleted."""
    assert default.kept == [] and {"reference.nrrd", "layout.nrrd", "synthetic-seed0.nrrd"} <= set(changed.kept)


def described_as(expected: dict[str, int]) -> Callable[[Result, Result], None]:
    """The engine used these attributes for every nodule (provenance), and the image differs from the default's."""
    def check(default: Result, changed: Result) -> None:
        differs(default, changed)
        used = json.loads(changed.provenance[0]["nodule_attributes"])
        assert used and all(entry["attributes"] == expected for entry in used), used
        assert "nodule_attributes" not in default.provenance[0] or default.provenance[0]["nodule_attributes"] != \
            changed.provenance[0]["nodule_attributes"]
    return check


def prompt_attributes() -> dict[str, int]:
    """The codes the engine's parser gives PROMPT (what the prompt box fills the combos with)."""
    return {f: int(round(v)) for f, v in nodule_attributes.parse_prompt(nodule_attributes.schema(ENGINE_DIR),
                                                                        PROMPT).items()}


# Scenario -> its parameter values on top of the panel's defaults; node values name objects of the `scene` fixture.
SCENARIOS = {
    "demo": {"device": "cpu"},  # the panel's first model (demo-native-32, bundled) and defaults
    "file": {"modelName": OTHER_CHECKPOINT, "localModelPath": "{tiny8}", "device": "cpu"},
    "ddpm": {"modelName": OTHER_CHECKPOINT, "localModelPath": "{tiny8}", "device": "cpu", "sampler": "ddpm"},
    # the Sample Data phantom's nodules (about 20 mm) need cubes of 2-mm voxels with demo-nodules (16³)
    "nodules": {"modelName": "demo-nodules", "device": "cpu", "patchSpacingMm": 2.0},
    "described": {"modelName": "demo-nodules", "device": "cpu", "patchSpacingMm": 2.0,
                  "noduleAttributes": json.dumps(DESCRIBED)},
    "add-nodule": {},
}
# Parameter (or panel widget) -> its entry, or why it is shown elsewhere. Every field of the parameter node has one.
CONTROLS: dict[str, Control | str] = {
    "referenceVolume": Control("demo", {"referenceVolume": "ct_brighter"}, differs),
    "segmentation": Control("demo", {"segmentation": "segmentation_half", "lungSegmentIds": ["half_lung"],
                                     "noduleSegmentIds": []}, differs),
    "lungSegmentIds": Control("demo", {"lungSegmentIds": ["lung", "extra_lung"]}, differs),
    "noduleSegmentIds": Control("demo", {"noduleSegmentIds": ["nodule 1"]}, differs),
    "noduleMarkups": Control("add-nodule", {"noduleMarkups": "other_point"}, differs),
    "noduleDiameterMm": Control("add-nodule", {"noduleDiameterMm": 16.0}, differs),
    "noduleIrregularity": Control("add-nodule", {"noduleIrregularity": 0.9}, differs),
    "noduleAttributes": Control("nodules", {"noduleAttributes": json.dumps(DESCRIBED)}, described_as(DESCRIBED)),
    "prompt": Control("nodules", {"prompt": PROMPT}, described_as(prompt_attributes())),
    "guidance": Control("described", {"guidance": 1.0}, both(differs, records("guidance", "1"))),
    "modelName": Control("demo", {"modelName": OTHER_CHECKPOINT, "localModelPath": "{tiny8}"},
                         both(differs, records("model", "tiny8.pt"))),
    "localModelPath": Control("file", {"localModelPath": "{tiny8_other}"}, both(records("model", "other8.pt"),
                                                                               hashes_its_model)),
    "device": Control("demo", {"device": "cuda"}, cuda_device),
    "sampler": Control("demo", {"sampler": "ddim"}, both(differs, records("sampler", "ddim"))),
    "steps": Control("demo", {"steps": 2}, both(differs, records("steps", "2"))),
    "aasVariant": Control("ddpm", {"aasVariant": "released"}, both(differs, records("aas_variant", "released"))),
    "precision": Control("demo", {"precision": OTHER_PRECISION}, both(differs, records("precision", OTHER_PRECISION))),
    "patchSpacingMm": Control("nodules", {"patchSpacingMm": 2.5}, both(differs, records("patch_spacing_mm", "2.5"))),
    "seed": Control("demo", {"seed": 5}, both(differs, records("seed", "5"))),
    "variants": Control("demo", {"variants": 2}, variants),
    "keepTemporaryFiles": Control("demo", {"keepTemporaryFiles": True}, keeps_files),
    "compareAfterSynthesis": "after a synthesis, shows the compare view (compare.py, Slicer's views): no engine option",
    "fade": "the compare view's reference/synthetic fade (compare.py, Slicer's views): no engine option",
}


def test_every_panel_parameter_has_an_entry():
    """Each field of the parameter node (and the prompt box) has an entry; the defaults are the main script's."""
    assert set(CONTROLS) == set(parameter_fields()) | {"prompt"}
    assert {"seed", "steps", "sampler", "guidance"} <= set(parameter_defaults({"engine": engine, "panel": panel}))


@dataclass
class Scene:
    """The module's scene: the phantom CT, its segmentations and points, the models, the shared engine worker."""

    context: object
    nodes: dict[str, object]
    segments: dict[str, str]  # segment name -> ID (in the segmentation that holds it)
    files: dict[str, str]
    worker: worker.EngineWorker
    work: Path
    runs: dict[str, Result] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Iterator[Scene]:
    """The Sample Data phantom in a scene, extra lung / nodule segments, two random 8³ models, one engine worker."""
    from lungddpm.model.checkpoints import save_checkpoint

    if str(REPO / "Testing" / "engine") not in sys.path:
        sys.path.insert(0, str(REPO / "Testing" / "engine"))
    from helpers import random_model  # the engine tests' small random models

    root = tmp_path_factory.mktemp("panel")
    files = {name: str(save_checkpoint(root / f"{name}.pt", random_model(seed, image_size=8)))
             for name, seed in (("tiny8", 0), ("other8", 1))}  # 8³, T = 8
    files["tiny8_other"] = files.pop("other8")
    context = new_mrml_context()
    ct_path, layout_path = sample.write_demo_phantom(ENGINE_DIR, root / "sample")
    ct, segmentation = sample.load_demo_sample(context, ct_path, layout_path)
    segments = {segmentation.GetSegmentation().GetNthSegment(n).GetName(): segmentation.GetSegmentation().GetNthSegmentID(n)
                for n in range(segmentation.GetSegmentation().GetNumberOfSegments())}
    lung = mrml.segment_mask(context, segmentation, segments["lung"], ct)
    array = mrml.volume_array(ct)
    # Lung added by a second segment (a few soft-tissue slices next to the lung), and half a lung on its own.
    extra = np.zeros_like(lung)
    rows = np.flatnonzero(lung.any(axis=(0, 2)))
    extra[:, rows[-1] + 1:rows[-1] + 4, :] = lung[:, rows[-1] - 3:rows[-1], :]
    segments["extra_lung"] = mrml.add_segment(segmentation, ct, mrml.SegmentData("extra lung", extra, jobs.LUNG_COLOR))
    half = lung.copy()
    half[:, :, : lung.shape[2] // 2] = False
    segmentation_half = mrml.create_segmentation(context, ct, "half", [mrml.SegmentData("half lung", half, jobs.LUNG_COLOR)])
    segments["half_lung"] = segmentation_half.GetSegmentation().GetNthSegmentID(0)
    brighter = mrml.add_volume_from_array(context, (array + 40).astype(array.dtype), mrml.ijk_to_ras(ct), "brighter")
    # Two points deep in the lung for the add-nodule controls (world RAS of lung voxels).
    inside = np.argwhere(lung)
    points = {}
    for name, kji in (("point", inside[len(inside) // 3]), ("other_point", inside[2 * len(inside) // 3])):
        markups = context.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        markups.AddControlPoint(*(mrml.ijk_to_ras(ct) @ np.append(kji[::-1], 1.0))[:3])
        points[name] = markups
    nodes = {"ct": ct, "ct_brighter": brighter, "segmentation": segmentation, "segmentation_half": segmentation_half,
             **points}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # the engine worker's environment (the machine's cores are shared)
        shared = worker.EngineWorker(engine.python_executable())
        yield Scene(context, nodes, segments, files, shared, root / "work")
        shared.kill()
    context.scene.Clear(True)


def panel_values(scenario: str, changed: dict) -> dict:
    """The parameter values of a run: the panel's defaults, the scenario's, the control's."""
    values = {**parameter_defaults({"engine": engine, "panel": panel}), "referenceVolume": "ct",
              "segmentation": "segmentation", "lungSegmentIds": ["lung"], "noduleSegmentIds": ["nodule 1", "nodule 2"],
              "noduleMarkups": "point", "modelName": "demo-native-32", **SCENARIOS[scenario], **changed}
    return values


def model_file(values: dict, s: Scene) -> Path:
    """The checkpoint the panel's model choice names: a model-list entry (bundled here), or the chosen file."""
    if values["modelName"] == OTHER_CHECKPOINT:
        return Path(values["localModelPath"].format(**s.files))
    entry = next(e for e in MODEL_LIST if e.name == values["modelName"])
    return models.resolve_model_file(entry, engine_dir=ENGINE_DIR, cache_dir=s.work / "cache", local_file=None)


def model_states(path: Path) -> panel.AttributeStates:
    """The attribute controls' states for a model file, as the panel reads them (modelAttributeStates)."""
    return panel.attribute_states(checkpoint_info.read_model_attributes(path), nodule_attributes.PANEL_ATTRIBUTES,
                                  nodule_attributes.shape_fields(ENGINE_DIR), "model")


def synthesize(values: dict, s: Scene, name: str) -> Result:
    """A synthesis as Synthesize runs it (onApplyButton, Logic.startSynthesis) with these parameter values."""
    ct, segmentation = s.nodes[values["referenceVolume"]], s.nodes[values["segmentation"]]
    path = model_file(values, s)
    states = model_states(path)
    stored = values["noduleAttributes"]
    if "prompt" in values:  # Enter in the prompt box fills the combos
        parsed = nodule_attributes.parse_prompt(nodule_attributes.schema(ENGINE_DIR), values["prompt"])
        stored, ignored = panel.prompt_values(parsed, states)
        assert ignored == []
    nodules = [s.segments[n] for n in values["noduleSegmentIds"]]
    for segment_id in nodules:  # "Apply to the chosen nodules": the combos' values become the segments' tags
        nodule_attributes.set_attribute_tags(segmentation, segment_id, nodule_attributes.PANEL_ATTRIBUTES,
                                             panel.add_nodule_attributes(stored, states))
    o = panel.sampling_options(values["sampler"], values["steps"], values["aasVariant"], values["precision"],
                               values["patchSpacingMm"])
    request = jobs.SynthesisRequest(ct, segmentation, [s.segments[n] for n in values["lungSegmentIds"]], nodules, path,
                                    panel.variant_seeds(values["seed"], values["variants"]), device=values["device"],
                                    sampler=o.sampler, steps=o.steps, aas_variant=o.aas_variant, precision=o.precision,
                                    patch_spacing_mm=o.patch_spacing_mm,
                                    model_attributes=checkpoint_info.read_model_attributes(path).attributes,
                                    guidance=values["guidance"])
    work, log = s.work / name, []
    job = jobs.SynthesisJob(s.context, request, engine_dir=ENGINE_DIR, work_dir=work, log=log.append,
                            keep_files=values["keepTemporaryFiles"], worker=s.worker)
    try:
        outputs = jobs.run_to_end(job)
    except jobs.EngineError as error:
        return Result(error=str(error), model=path, log=log)
    kept = sorted(p.name for p in work.iterdir()) if work.exists() else []
    sidecar = work / "layout.nodules.json"
    sent = json.loads(sidecar.read_text()) if sidecar.exists() else None
    shutil.rmtree(work, ignore_errors=True)
    return Result(outputs=outputs, provenance=[mrml.provenance(o.volume_node) for o in outputs],
                  voxels=[mrml.volume_array(o.volume_node) for o in outputs], total=job.total, kept=kept, model=path,
                  log=log, sidecar=sent)


def add_nodule(values: dict, s: Scene, name: str) -> Result:
    """A nodule as Add nodule places it (onAddNodule, Logic.addNodule): at the point list's last point, then removed.

    It is given the combos' values the panel enables for the chosen model (the shape ones for every model).
    """
    ct, segmentation, markups = (s.nodes[values[k]] for k in ("referenceVolume", "segmentation", "noduleMarkups"))
    centre = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(markups.GetNumberOfControlPoints() - 1, centre)
    attributes = panel.add_nodule_attributes(values["noduleAttributes"], model_states(model_file(values, s)))
    segment_id = jobs.add_nodule_segment(s.context, ct, segmentation, [s.segments[n] for n in values["lungSegmentIds"]],
                                         centre, values["noduleDiameterMm"], irregularity=values["noduleIrregularity"],
                                         engine_dir=ENGINE_DIR, work_dir=s.work / name, attributes=attributes,
                                         seed=segmentation.GetSegmentation().GetNumberOfSegments())
    mask = mrml.segment_mask(s.context, segmentation, segment_id, ct)
    tags = nodule_attributes.segment_attributes(segmentation, segment_id, nodule_attributes.PANEL_ATTRIBUTES)
    segmentation.GetSegmentation().RemoveSegment(segment_id)  # the scene stays as the other entries expect it
    return Result(mask=mask, tags=tags)


def run(scenario: str, changed: dict, s: Scene) -> Result:
    """The run of a scenario with changed values, made once per module."""
    key = json.dumps([scenario, changed], sort_keys=True)
    if key not in s.runs:
        action = add_nodule if scenario == "add-nodule" else synthesize
        s.runs[key] = action(panel_values(scenario, changed), s, f"run{len(s.runs)}")
    return s.runs[key]


@pytest.mark.parametrize("name", [n for n, c in CONTROLS.items() if isinstance(c, Control)])
def test_panel_control_reaches_the_engine(name, scene):
    """The control changes what the engine makes (or its provenance records the value) against its scenario's run."""
    control = CONTROLS[name]
    control.check(run(control.scenario, {}, scene), run(control.scenario, control.values, scene))


SHAPED = {"lobulation": 5, "sphericity": 1}  # a strongly lobulated, linear nodule: neither is a demo-nodules input


@pytest.mark.parametrize("model", ["demo-nodules", "demo-native-32"])
def test_add_nodule_paints_the_shape_attributes_for_any_model(model, scene):
    """Lobulation and sphericity change the painted nodule and become its tags, for an attribute model and a plain one."""
    path = model_file(panel_values("add-nodule", {"modelName": model}), scene)
    takes = checkpoint_info.read_model_attributes(path).attributes
    assert not set(SHAPED) & set(takes)  # the panel enables them for the outline, not for the model
    changed = run("add-nodule", {"modelName": model, "noduleAttributes": json.dumps({**SHAPED, "malignancy": 5})}, scene)
    differs(run("add-nodule", {}, scene), changed)
    assert changed.tags == SHAPED  # malignancy: neither model takes it, so its combo is off and nothing is sent


def test_a_no_attribute_model_enables_the_shape_controls_only(scene):
    """demo-native-32 (no attributes): sphericity, spiculation and lobulation on, the rest and guidance off."""
    states = model_states(model_file(panel_values("demo", {}), scene))
    assert {f for f, on in states.enabled.items() if on} == {"sphericity", "spiculation", "lobulation"}
    assert not states.guidance_enabled


def test_synthesize_leaves_out_the_shape_tags_the_model_does_not_take(scene):
    """demo-nodules with a lobulation tag runs, sends only the tags it takes, and says once why lobulation stays out."""
    tagged = {**DESCRIBED, "lobulation": 4}
    changed = run("nodules", {"noduleAttributes": json.dumps(tagged), "keepTemporaryFiles": True}, scene)
    described_as(DESCRIBED)(run("nodules", {}, scene), changed)
    sent = [{k: v for k, v in record["attributes"].items() if k != "diameter_mm"} for record in changed.sidecar["nodules"]]
    assert sent and all(attributes == DESCRIBED for attributes in sent), sent  # the tags it takes, no lobulation
    said = [line for line in changed.log if "does not take lobulation" in line]
    assert said == ["demo-nodules.pt does not take lobulation; Synthesize leaves it out (lobulation shapes the outline "
                    "Add nodule paints)"]
