"""The module's MRML layer on real MRML classes (slicer-core, headless), a real CT and the real engine.

The CT node gets a permuted, flipped, anisotropic IJK-to-RAS matrix; lung and nodule segments come from
label arrays through Slicer's own labelmap import and overlap. Expected physical points are computed with
SimpleITK's index<->physical mapping, independently of the module's geometry code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_testing import MODULE_DIR, add_volume, alive, poll_until_running, require_slicer_core
from lungddpm.runtime.precision import auto_precision

require_slicer_core(module_level=True)
import vtk  # noqa: E402  (the VTK that slicer-core brings)

NODULE_RADIUS_MM = 9.0
SECOND_NODULE_RADIUS_MM = 4.0
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def reoriented(image: sitk.Image) -> sitk.Image:
    """Same physical image on another grid: every other voxel in-plane, axes permuted (k, i, j) and two flipped."""
    return sitk.Flip(sitk.PermuteAxes(sitk.Shrink(image, [2, 2, 1]), [2, 0, 1]), [True, False, True])


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image, built from its own index -> physical mapping."""
    origin = np.array(image.TransformIndexToPhysicalPoint((0, 0, 0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0, 0, 0]
        unit[axis] = 1
        matrix[:3, axis] = (np.array(image.TransformIndexToPhysicalPoint(unit)) - origin) * LPS_TO_RAS
    matrix[:3, 3] = origin * LPS_TO_RAS
    return matrix


def import_segment(context, segmentation_node, name: str, mask: np.ndarray, matrix: np.ndarray) -> str:
    """A segment made by Slicer's ImportLabelmapToSegmentationNode from a label array (temporary labelmap node)."""
    labelmap = add_volume(context.scene, "vtkMRMLLabelMapVolumeNode", name, mask.astype(np.uint8), matrix)
    before = set(segment_ids(segmentation_node))
    assert context.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node)
    context.scene.RemoveNode(labelmap.GetDisplayNode())
    context.scene.RemoveNode(labelmap)
    (new_id,) = set(segment_ids(segmentation_node)) - before
    segmentation_node.GetSegmentation().GetSegment(new_id).SetName(name)
    return new_id


def segment_ids(segmentation_node) -> list[str]:
    """The segment IDs of a segmentation node in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def node_ids(scene) -> set[str]:
    """The IDs of every node in the scene."""
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


@pytest.fixture(scope="module")
def case(real_ct_dir: Path) -> dict:
    """The real CT and its crude lung label on a reoriented grid, a nodule centre (LPS) and probe points."""
    ct = reoriented(sitk.ReadImage(str(real_ct_dir / "ct.nii.gz")))
    crude = reoriented(sitk.ReadImage(str(real_ct_dir / "layout-crude.nii.gz")))
    lung = sitk.GetArrayFromImage(crude) == 1
    # Nodule centre: the lung voxel deepest inside the lung (farthest from its border), in LPS mm.
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(sitk.GetImageFromArray(lung.astype(np.uint8)) * 1,
                                                                insideIsPositive=True, useImageSpacing=False))
    k, j, i = np.unravel_index(np.argmax(np.where(lung, depth, -1)), lung.shape)
    centre = np.array(ct.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
    physical = np.stack(np.meshgrid(*(np.arange(n) for n in lung.shape), indexing="ij"), axis=-1)
    distance = np.linalg.norm(_physical_points(ct, physical) - centre, axis=-1)
    nodule = distance <= NODULE_RADIUS_MM
    lung_only = lung & (distance > NODULE_RADIUS_MM + 15)
    lung_probe = np.array(ct.TransformIndexToPhysicalPoint(tuple(int(v) for v in np.argwhere(lung_only)[0][::-1])))
    # A second, smaller nodule: the deepest lung voxel at least 40 mm from the first one.
    k2, j2, i2 = np.unravel_index(np.argmax(np.where(lung & (distance > 40), depth, -1)), lung.shape)
    centre_b = np.array(ct.TransformIndexToPhysicalPoint((int(i2), int(j2), int(k2))))
    nodule_b = np.linalg.norm(_physical_points(ct, physical) - centre_b, axis=-1) <= SECOND_NODULE_RADIUS_MM
    return {"image": ct, "array": sitk.GetArrayFromImage(ct), "matrix": ijk_to_ras_of(ct), "lung": lung,
            "nodule": nodule, "nodule_b": nodule_b, "centre_lps": centre, "lung_probe_lps": lung_probe,
            "background_probe_lps": np.array(ct.TransformIndexToPhysicalPoint((0, 0, 0)))}


def _physical_points(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """LPS points of (k, j, i) indices with SimpleITK's geometry (origin + direction @ spacing @ ijk)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + kji[..., ::-1] @ (direction @ np.diag(image.GetSpacing())).T


@pytest.fixture()
def scene_case(mrml_context, case: dict) -> dict:
    """The CT volume node and a segmentation with an overlapping lung and nodule segment."""
    scene = mrml_context.scene
    ct = add_volume(scene, "vtkMRMLScalarVolumeNode", "A0001 CT", case["array"], case["matrix"])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "layout")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    lung_id = import_segment(mrml_context, segmentation, "lungs", case["lung"], case["matrix"])
    nodule_id = import_segment(mrml_context, segmentation, "nodule A", case["nodule"], case["matrix"])
    assert np.any(case["lung"] & case["nodule"]), "the test needs overlapping segments"
    return {"ct": ct, "segmentation": segmentation, "lung_id": lung_id, "nodule_id": nodule_id}


def snapshot(context, nodes: dict) -> dict:
    """Arrays, matrices and segment masks of the input nodes, to compare after an operation."""
    from LungDDPMSlicerLib import mrml

    masks = {sid: mrml.segment_mask(context, nodes["segmentation"], sid, nodes["ct"])
             for sid in segment_ids(nodes["segmentation"])}
    return {"array": mrml.volume_array(nodes["ct"]), "matrix": mrml.ijk_to_ras(nodes["ct"]), "masks": masks,
            "nodes": node_ids(context.scene), "name": nodes["ct"].GetName()}


def assert_unchanged(context, nodes: dict, before: dict, allowed_new: set[str] = frozenset()) -> None:
    """The input nodes hold what they held before; the scene holds no other new nodes."""
    after = snapshot(context, nodes)
    assert np.array_equal(after["array"], before["array"])
    assert np.array_equal(after["matrix"], before["matrix"])
    assert after["masks"].keys() == before["masks"].keys()
    for sid, mask in before["masks"].items():
        assert np.array_equal(after["masks"][sid], mask), f"segment {sid} changed"
    assert after["name"] == before["name"]
    assert after["nodes"] - before["nodes"] == set(allowed_new)


def label_at(path: Path, point_lps: np.ndarray) -> int:
    """The label of an image file at an LPS point (nearest voxel), read with SimpleITK."""
    image = sitk.ReadImage(str(path))
    return int(image[image.TransformPhysicalPointToIndex(point_lps.tolist())])


def test_export_writes_labels_at_the_right_physical_points(mrml_context, case, scene_case, tmp_path):
    """Reference and layout NRRDs: exact grid, labels 0/1/2 at known LPS and RAS points, nodule over lung."""
    from LungDDPMSlicerLib import mrml

    before = snapshot(mrml_context, scene_case)
    exported = mrml.export_layout(mrml_context, scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                  [scene_case["nodule_id"]], tmp_path)
    assert_unchanged(mrml_context, scene_case, before)

    reference, layout = sitk.ReadImage(str(exported.reference_path)), sitk.ReadImage(str(exported.layout_path))
    for image in (reference, layout):
        assert image.GetSize() == case["image"].GetSize()
        np.testing.assert_allclose(image.GetOrigin(), case["image"].GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(image.GetSpacing(), case["image"].GetSpacing(), rtol=1e-12)
        np.testing.assert_allclose(image.GetDirection(), case["image"].GetDirection(), atol=1e-12)
    assert np.array_equal(sitk.GetArrayFromImage(reference), case["array"])
    assert reference.GetPixelID() == case["image"].GetPixelID()

    assert label_at(exported.layout_path, case["centre_lps"]) == 2
    assert label_at(exported.layout_path, case["lung_probe_lps"]) == 1
    assert label_at(exported.layout_path, case["background_probe_lps"]) == 0
    expected = np.where(case["nodule"], 2, np.where(case["lung"], 1, 0))
    assert np.array_equal(sitk.GetArrayFromImage(layout), expected)

    # The same points in RAS through the node's own RAS-to-IJK matrix land on the same labels.
    ras_to_ijk = vtk.vtkMatrix4x4()
    scene_case["ct"].GetRASToIJKMatrix(ras_to_ijk)
    for point_lps, label in ((case["centre_lps"], 2), (case["lung_probe_lps"], 1)):
        i, j, k = np.round(mrml.matrix_to_array(ras_to_ijk) @ np.append(point_lps * LPS_TO_RAS, 1.0))[:3].astype(int)
        assert exported.layout[k, j, i] == label


def test_synthesis_round_trip_with_the_real_engine(mrml_context, case, scene_case, tiny_checkpoint, tmp_path):
    """Export -> `lungddpm synthesize` subprocess (tiny released checkpoint) -> import with exact geometry."""
    import slicer
    from LungDDPMSlicerLib import engine, jobs, mrml

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_context.scene)
    study = sh.CreateStudyItem(sh.GetSceneItemID(), "study")
    sh.CreateItem(study, scene_case["ct"])  # inside Slicer the item exists already; headless it is made here
    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"]], tiny_checkpoint, seeds=[7], device="cpu", steps=4)
    job = jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                            work_dir=tmp_path / "work", log=lambda line: None)
    (output,) = jobs.run_to_end(job)
    assert (job.step, job.total) == (4, 4)  # the default sampler (dpmpp2m) with 4 steps: 4 network passes

    volume, layout = output.volume_node, output.segmentation_node
    assert volume.GetName() == "A0001 CT synthetic (seed 7)"
    assert layout.GetName() == "A0001 CT synthetic layout (seed 7)"
    assert np.array_equal(mrml.ijk_to_ras(volume), case["matrix"])
    assert volume.GetImageData().GetDimensions() == scene_case["ct"].GetImageData().GetDimensions()
    attributes = mrml.provenance(volume)
    assert attributes["SYNTHETIC"] == "true"
    assert attributes["model_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert (attributes["model"], attributes["seed"], attributes["sampler"], attributes["steps"]) == \
           (tiny_checkpoint.name, "7", "dpmpp2m", "4")
    assert attributes["device"] == "cpu" and attributes["profile"] == "released" and attributes["lungddpm_version"]
    assert attributes["precision"] == auto_precision("cpu")  # the request's default, auto, as the engine resolved it
    assert float(attributes["blend_margin_mm"]) > 0 and "patches" not in attributes
    # Outside the lungs the engine returns the reference voxel for voxel: proves the import's voxel order.
    synthetic = mrml.volume_array(volume)
    far = ~(case["lung"] | case["nodule"])
    assert np.array_equal(synthetic[far], case["array"][far])
    assert not np.array_equal(synthetic[case["lung"]], case["array"][case["lung"]])
    # The layout segmentation holds the exact layout, segments named as the input.
    names = [layout.GetSegmentation().GetSegment(sid).GetName() for sid in segment_ids(layout)]
    assert names == ["lungs", "nodule A"]
    lung_mask, nodule_mask = (mrml.segment_mask(mrml_context, layout, sid, scene_case["ct"]) for sid in segment_ids(layout))
    assert np.array_equal(lung_mask, case["lung"] & ~case["nodule"])
    assert np.array_equal(nodule_mask, case["nodule"])
    # Beside the reference, shown, inputs untouched, temporary files gone.
    for node in (volume, layout):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    assert mrml_context.application_logic.GetSelectionNode().GetActiveVolumeID() == volume.GetID()
    new_nodes = {volume.GetID(), volume.GetDisplayNode().GetID(), layout.GetID(), layout.GetDisplayNode().GetID()}
    assert_unchanged(mrml_context, scene_case, before, allowed_new=new_nodes)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("runner", ["one process per variant", "worker"])
def test_cancel_kills_the_engine_and_leaves_scene_and_disk_clean(mrml_context, scene_case, tiny_checkpoint, tmp_path,
                                                                 runner):
    """Cancel while sampling: no engine process survives, the work folder is gone, the scene is unchanged."""
    from LungDDPMSlicerLib import engine, jobs, worker

    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"]], tiny_checkpoint, seeds=[1, 2], device="cpu",
                                    sampler="ddpm")  # all 20 steps: time to cancel after the first
    job = jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                            work_dir=tmp_path / "work", log=lambda line: None,
                            worker=worker.EngineWorker(engine.python_executable()) if runner == "worker" else None)
    job.start()
    poll_until_running(job)
    assert job.state is jobs.JobState.RUNNING and job.step >= 1, job.error
    pid = job.runner.pid
    job.cancel()
    assert job.state is jobs.JobState.CANCELLED
    assert not alive(pid)
    assert not (tmp_path / "work").exists()
    assert job.outputs == []
    assert_unchanged(mrml_context, scene_case, before)


def test_engine_error_is_shown_as_its_one_line_message(mrml_context, case, scene_case, tiny_checkpoint, tmp_path):
    """A nodule outside the lung: the job fails with the engine's message (no traceback), nothing is added."""
    from LungDDPMSlicerLib import engine, jobs

    outside = np.zeros_like(case["lung"])
    outside[0:3, 0:3, 0:3] = True  # a corner of the image: outside the body and the lung
    far_id = import_segment(mrml_context, scene_case["segmentation"], "stray nodule", outside, case["matrix"])
    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"], [far_id],
                                    tiny_checkpoint, seeds=[0], device="cpu")
    job = jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                            work_dir=tmp_path / "work", log=lambda line: None)
    with pytest.raises(jobs.EngineError) as error:
        jobs.run_to_end(job)
    message = str(error.value)
    assert "outside the lung" in message and "Traceback" not in message and "\n" not in message
    assert not message.startswith("lungddpm: error:")
    assert job.state is jobs.JobState.FAILED and not (tmp_path / "work").exists()
    assert_unchanged(mrml_context, scene_case, before)


@pytest.fixture(scope="module")
def tiny_patch_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Lung-DDPM+-shaped checkpoint: 16³ cubes, 2 input channels, T = 20, released-patch profile."""
    import torch
    from lungddpm.model.checkpoints import save_checkpoint
    from lungddpm.model.config import ModelConfig
    from lungddpm.model.lungddpm import LungDDPM

    torch.manual_seed(0)
    model = LungDDPM(ModelConfig(image_size=16, num_channels=32, channel_mult=(1, 2), attention_resolutions=(8,),
                                 in_channels=2, timesteps=20, profile="released-patch"))
    return save_checkpoint(tmp_path_factory.mktemp("plus") / "tiny-plus.pt", model)


def test_patch_model_output_is_a_volume_and_a_nodule_segmentation(mrml_context, case, scene_case,
                                                                   tiny_patch_checkpoint, tmp_path):
    """A Lung-DDPM+ model through the job: only the two nodules change; volume + layout segments come back."""
    from LungDDPMSlicerLib import engine, jobs, mrml

    second_id = import_segment(mrml_context, scene_case["segmentation"], "nodule B", case["nodule_b"], case["matrix"])
    before = snapshot(mrml_context, scene_case)
    request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                    [scene_case["nodule_id"], second_id], tiny_patch_checkpoint, seeds=[3],
                                    device="cpu", steps=3)
    job = jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                            work_dir=tmp_path / "work", log=lambda line: None)
    (output,) = jobs.run_to_end(job)
    assert (job.step, job.total) == (3, 3)  # two cubes, one batch: 3 steps × 1 batch

    volume, layout = output.volume_node, output.segmentation_node
    assert volume.GetName() == "A0001 CT synthetic (seed 3)" and np.array_equal(mrml.ijk_to_ras(volume), case["matrix"])
    attributes = mrml.provenance(volume)
    assert (attributes["profile"], attributes["patches"], attributes["patch_spacing_mm"]) == \
           ("released-patch", "2", "reference voxels")
    assert (attributes["sampler"], attributes["steps"], attributes["precision"], attributes["SYNTHETIC"]) == \
           ("dpmpp2m", "3", auto_precision("cpu"), "true")
    # Cubes on the CT's own voxels paste back exactly the nodules: every other voxel is the reference's.
    synthetic, nodules = mrml.volume_array(volume), case["nodule"] | case["nodule_b"]
    assert np.array_equal(synthetic[~nodules], case["array"][~nodules])
    for mask in (case["nodule"], case["nodule_b"]):
        assert not np.array_equal(synthetic[mask], case["array"][mask])
    names = [layout.GetSegmentation().GetSegment(sid).GetName() for sid in segment_ids(layout)]
    assert names == ["lungs", "nodule A", "nodule B"]
    masks = [mrml.segment_mask(mrml_context, layout, sid, scene_case["ct"]) for sid in segment_ids(layout)]
    assert np.array_equal(masks[0], case["lung"] & ~nodules)
    assert np.array_equal(masks[1], case["nodule"]) and np.array_equal(masks[2], case["nodule_b"])
    new_nodes = {volume.GetID(), volume.GetDisplayNode().GetID(), layout.GetID(), layout.GetDisplayNode().GetID()}
    assert_unchanged(mrml_context, scene_case, before, allowed_new=new_nodes)
    assert not (tmp_path / "work").exists()


def test_sampling_options_the_engine_would_refuse_stop_the_job_before_any_export(mrml_context, scene_case, tmp_path):
    """The released AAS variant with a solver, or fp16 on the CPU, is refused when the job is made, with the fix."""
    from LungDDPMSlicerLib import engine, jobs

    for options, message in (({"aas_variant": "released"}, "only for the ddpm sampler"),
                             ({"device": "cpu", "precision": "fp16"}, "bf16 or fp32")):
        request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                        [scene_case["nodule_id"]], Path("unused.pt"), seeds=[0], **options)
        with pytest.raises(ValueError, match=message):
            jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                              work_dir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_segments_from_masks_and_nodule_names(mrml_context, case, scene_case):
    """add_segment writes a mask exactly on the reference grid; nodule names count up past used ones."""
    from LungDDPMSlicerLib import jobs, mrml

    segmentation = scene_case["segmentation"]
    assert jobs.next_nodule_name(segmentation) == "nodule 1"
    segmentation.GetSegmentation().GetSegment(scene_case["nodule_id"]).SetName("nodule 1")
    assert jobs.next_nodule_name(segmentation) == "nodule 2"
    mask = np.zeros_like(case["lung"])
    mask[5:9, 20:30, 40:45] = True
    segment_id = mrml.add_segment(segmentation, scene_case["ct"], mrml.SegmentData("box", mask, (0.1, 0.2, 0.3),
                                                                                     {"LungDDPM.kind": "solid"}))
    assert np.array_equal(mrml.segment_mask(mrml_context, segmentation, segment_id, scene_case["ct"]), mask)
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    kind = vtk.reference("")
    assert segment.GetName() == "box" and segment.GetTag("LungDDPM.kind", kind) and kind.get() == "solid"
    with pytest.raises(mrml.ExportError, match="no segment"):
        mrml.segment_mask(mrml_context, segmentation, "missing", scene_case["ct"])
    with pytest.raises(mrml.ExportError, match="also chosen as a nodule"):
        mrml.export_layout(mrml_context, scene_case["ct"], segmentation, segment_id, [segment_id], Path("unused"))


def test_several_segments_as_lung(mrml_context, case, scene_case, tmp_path):
    """Three 'lobe' segments chosen as lung at once: the layout's lung is their union; overlaps are refused."""
    from LungDDPMSlicerLib import mrml

    slices = np.flatnonzero(case["lung"].any(axis=(1, 2)))
    thirds = np.array_split(slices, 3)
    lobes = [np.isin(np.arange(case["lung"].shape[0]), part)[:, None, None] & case["lung"] for part in thirds]
    ids = [import_segment(mrml_context, scene_case["segmentation"], f"lobe {n}", lobe, case["matrix"])
           for n, lobe in enumerate(lobes)]
    exported = mrml.export_layout(mrml_context, scene_case["ct"], scene_case["segmentation"], ids,
                                  [scene_case["nodule_id"]], tmp_path)
    assert np.array_equal(exported.layout > 0, case["lung"] | case["nodule"])
    assert np.array_equal(exported.layout == 2, case["nodule"]) and exported.lung.name == "lung"
    with pytest.raises(mrml.ExportError, match="also chosen as a nodule"):
        mrml.export_layout(mrml_context, scene_case["ct"], scene_case["segmentation"], ids, [ids[1]], tmp_path)
    with pytest.raises(mrml.ExportError, match="no lung segment is chosen"):
        mrml.export_layout(mrml_context, scene_case["ct"], scene_case["segmentation"], [], [], tmp_path)


@pytest.fixture()
def without_torch(monkeypatch, tmp_path) -> None:
    """Engine subprocesses in which `import torch` fails, as in a Slicer where PyTorch is not installed yet."""
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked: this step must not need it')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")])))


def test_automatic_lung_segment_carries_the_engine_report(mrml_context, case, scene_case, tmp_path, without_torch):
    """A real `lungddpm lung-mask`, without torch: the segment holds each lung's volume; a filled left lung warns."""
    from LungDDPMSlicerLib import engine, jobs, mrml

    engine_dir = engine.find_engine_dir(MODULE_DIR)
    segmentation = scene_case["segmentation"]
    lung_id = jobs.create_lung_segment(mrml_context, scene_case["ct"], segmentation, engine_dir=engine_dir,
                                       work_dir=tmp_path / "a")
    litres = {side: float(mrml.segment_tag(segmentation, lung_id, f"LungDDPM.{side}_lung_l")) for side in ("right", "left")}
    assert litres["right"] > litres["left"] > 1.5 and jobs.lung_mask_warnings(segmentation, lung_id) == []
    assert not (tmp_path / "a").exists()

    physical = np.stack(np.meshgrid(*(np.arange(n) for n in case["lung"].shape), indexing="ij"), axis=-1)
    left_lung = case["lung"] & (_physical_points(case["image"], physical)[..., 0] > 0)  # LPS x > 0: the left
    filled = add_volume(mrml_context.scene, "vtkMRMLScalarVolumeNode", "filled",
                        np.where(left_lung, 30, case["array"]).astype(case["array"].dtype), case["matrix"])
    warned = jobs.create_lung_segment(mrml_context, filled, segmentation, engine_dir=engine_dir, work_dir=tmp_path / "b")
    (warning,) = jobs.lung_mask_warnings(segmentation, warned)
    assert "left lung" in warning and "missing" in warning


def test_add_nodule_without_torch_places_a_tagged_nodule_at_the_point(mrml_context, case, scene_case, tmp_path,
                                                                      without_torch):
    """add-nodule (no torch) at a world point of a transformed CT: the diameter's ball there, spiculated as its
    attributes ask (spicules reach up to 1.8 radii), with its attribute tags."""
    from LungDDPMSlicerLib import engine, jobs, mrml, nodule_attributes

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # the CT under a 10 mm translation, e.g. after a registration
    transform = mrml_context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(shift)
    ct, segmentation = scene_case["ct"], scene_case["segmentation"]
    ct.SetAndObserveTransformNodeID(transform.GetID())
    centre_world = case["lung_probe_lps"] * LPS_TO_RAS + np.array([10.0, 0.0, 0.0])
    nodule_id = jobs.add_nodule_segment(mrml_context, ct, segmentation, scene_case["lung_id"], centre_world, 8.0,
                                        irregularity=0.0, engine_dir=engine.find_engine_dir(MODULE_DIR),
                                        work_dir=tmp_path / "work", attributes={"texture": 1, "spiculation": 4})
    fields = ("texture", "spiculation", "margin")
    assert nodule_attributes.segment_attributes(segmentation, nodule_id, fields) == {"texture": 1.0, "spiculation": 4.0}
    assert mrml.segment_tag(segmentation, nodule_id, "LungDDPM.diameter_mm") == "8"
    mask = mrml.segment_mask(mrml_context, segmentation, nodule_id, ct)
    physical = np.stack(np.meshgrid(*(np.arange(n) for n in mask.shape), indexing="ij"), axis=-1)
    distance = np.linalg.norm(_physical_points(case["image"], physical) - case["lung_probe_lps"], axis=-1)
    assert mask[distance <= 2.0].all() and not mask[distance >= 4.0 * 1.8 + 1.0].any()
    assert mask[distance >= 5.0].any()  # spicules, beyond the 4-mm radius
    assert mrml.segment_tag(segmentation, nodule_id, "LungDDPM.irregularity") == "0"
    lobed = jobs.add_nodule_segment(mrml_context, ct, segmentation, scene_case["lung_id"], centre_world, 8.0,
                                    irregularity=0.4, engine_dir=engine.find_engine_dir(MODULE_DIR),
                                    work_dir=tmp_path / "work", attributes={"lobulation": 5})
    assert mrml.segment_tag(segmentation, lobed, "LungDDPM.irregularity") in (None, "")  # lobulation sets the lobes
    assert not (tmp_path / "work").exists()


def test_attributes_travel_from_segment_tags_to_the_engines_provenance(mrml_context, case, scene_case, tmp_path):
    """demo-nodules: the command carries --nodules-json and --guidance; the output records each nodule's attributes."""
    from LungDDPMSlicerLib import checkpoint_info, engine, jobs, mrml, nodule_attributes

    engine_dir = engine.find_engine_dir(MODULE_DIR)
    model = engine_dir / "lungddpm" / "models" / "demo-nodules.pt"
    takes = checkpoint_info.read_model_attributes(model).attributes
    segmentation = scene_case["segmentation"]
    second_id = import_segment(mrml_context, segmentation, "nodule B", case["nodule_b"], case["matrix"])
    nodule_attributes.set_attribute_tags(segmentation, scene_case["nodule_id"], takes, {"texture": 1, "spiculation": 5})
    nodule_attributes.set_attribute_tags(segmentation, second_id, takes, {"texture": 5, "margin": 2})
    lines = []
    request = jobs.SynthesisRequest(scene_case["ct"], segmentation, scene_case["lung_id"],
                                    [scene_case["nodule_id"], second_id], model, seeds=[1], device="cpu", steps=2,
                                    model_attributes=takes, guidance=2.0)
    job = jobs.SynthesisJob(mrml_context, request, engine_dir=engine_dir, work_dir=tmp_path / "work",
                            log=lines.append, keep_files=True)
    (output,) = jobs.run_to_end(job)
    (command,) = [line for line in lines if line.startswith("Variant 1/1")]
    assert "--nodules-json" in command and "--guidance 2.0" in command
    record = mrml.provenance(output.volume_node)
    assert record["guidance"] == "2" and record["attribute_schema"] == ",".join(takes)
    used = sorted(json.loads(record["nodule_attributes"]), key=lambda entry: entry["attributes"]["texture"])
    assert [entry["attributes"] for entry in used] == [{"texture": 1, "spiculation": 5}, {"texture": 5, "margin": 2}]
    sidecar = json.loads((tmp_path / "work" / "layout.nodules.json").read_text())
    centres = [np.array(n["center_lps_mm"]) for n in sidecar["nodules"]]
    assert min(np.linalg.norm(c - case["centre_lps"]) for c in centres) < 1.0  # keyed by each nodule's centre in mm

    plain = engine.synthesize_command("python", Path("r.nrrd"), Path("l.nrrd"), model, Path("o.nrrd"), seed=1, device="cpu")
    assert "--nodules-json" not in plain and "--guidance" not in plain  # without attributes the command has neither


def test_one_worker_serves_several_jobs_and_survives_an_engine_error(mrml_context, scene_case, tiny_checkpoint,
                                                                     tmp_path):
    """Variants and new jobs go to the same engine process (model loaded once); an engine error fails only its job."""
    from LungDDPMSlicerLib import engine, jobs, mrml, worker

    from lungddpm import cli

    assert worker.WORKER_FINISHED == cli.WORKER_FINISHED
    shared = worker.EngineWorker(engine.python_executable())

    def job(name: str, seeds: list[int], steps: int) -> jobs.SynthesisJob:
        """A job of the scene case on the shared worker."""
        request = jobs.SynthesisRequest(scene_case["ct"], scene_case["segmentation"], scene_case["lung_id"],
                                        [scene_case["nodule_id"]], tiny_checkpoint, seeds=seeds, device="cpu",
                                        steps=steps)
        return jobs.SynthesisJob(mrml_context, request, engine_dir=engine.find_engine_dir(MODULE_DIR),
                                 work_dir=tmp_path / name, log=lambda line: None, worker=shared)

    (first,) = jobs.run_to_end(job("first", [1], 2))
    pid = shared.pid
    with pytest.raises(jobs.EngineError, match="steps"):
        jobs.run_to_end(job("bad", [3], 21))  # more steps than the model's T = 20: the engine refuses it
    (again,) = jobs.run_to_end(job("again", [1], 2))
    assert shared.pid == pid and shared.alive and shared.jobs_sent == 3
    assert np.array_equal(mrml.volume_array(again.volume_node), mrml.volume_array(first.volume_node))  # same seed
    shared.kill()  # what scene close does
    assert not alive(pid) and not shared.alive
