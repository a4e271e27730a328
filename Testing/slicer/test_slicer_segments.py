"""Segments the module writes (lung, nodules) under parent transforms, and new segmentations, on real MRML classes.

The reference for "the right voxels" is Slicer's own ImportLabelmapToSegmentationNode, given a labelmap node
that holds the same mask on the CT's grid under the CT's parent transform; both are read back with Slicer's
ExportSegmentsToLabelmapNode onto the CT.
"""

from __future__ import annotations

import numpy as np
import pytest
from slicer_testing import add_volume, require_slicer_core

slicer = require_slicer_core(module_level=True)
import vtk  # noqa: E402  (the VTK that slicer-core brings)

SHAPE = (20, 24, 28)  # (k, j, i)
MATRIX = np.array([[1.5, 0, 0, -20.0], [0, -1.2, 0, 30.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def volume(scene, cls: str, name: str, array: np.ndarray):
    """A volume node of class cls holding a (k, j, i) array on MATRIX's grid."""
    return add_volume(scene, cls, name, array, MATRIX)


def linear_transform(scene, translation_mm: tuple[float, float, float], rotation_deg: float = 0.0):
    """A linear transform node: a rotation about the S axis, then a translation (RAS mm)."""
    transform = vtk.vtkTransform()
    transform.Translate(*translation_mm)
    transform.RotateZ(rotation_deg)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def box_mask() -> np.ndarray:
    """1000 voxels in a 10 x 10 x 10 box, off the CT's centre."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[4:14, 6:16, 9:19] = True
    return mask


CASES = {  # (CT's transform, segmentation's transform)
    "ct moved 10 mm": ((10.0, 0.0, 0.0), None),
    "segmentation moved": (None, (0.0, -7.5, 4.0)),
    "both, differently, with rotation": ((10.0, 3.0, 0.0), (-5.0, 0.0, 2.0, 30.0)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_add_segment_under_parent_transforms_lands_where_slicers_import_does(mrml_context, case):
    """add_segment under transforms gives the voxels Slicer's ImportLabelmapToSegmentationNode gives."""
    from LungDDPMSlicerLib import mrml

    scene = mrml_context.scene
    ct_transform, seg_transform = CASES[case]
    ct = volume(scene, "vtkMRMLScalarVolumeNode", "CT", np.full(SHAPE, -800, dtype=np.int16))
    ours = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ours")
    reference = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Slicer's import")
    if ct_transform is not None:
        ct.SetAndObserveTransformNodeID(linear_transform(scene, ct_transform).GetID())
    if seg_transform is not None:
        node = linear_transform(scene, seg_transform[:3], *seg_transform[3:])
        for segmentation in (ours, reference):
            segmentation.SetAndObserveTransformNodeID(node.GetID())
    mask = box_mask()
    ours_id = mrml.add_segment(ours, ct, mrml.SegmentData("box", mask))
    labelmap = volume(scene, "vtkMRMLLabelMapVolumeNode", "box", mask.astype(np.uint8))
    labelmap.SetAndObserveTransformNodeID(ct.GetTransformNodeID())
    assert mrml_context.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap, reference)
    reference_id = reference.GetSegmentation().GetNthSegmentID(0)

    expected = mrml.segment_mask(mrml_context, reference, reference_id, ct)
    got = mrml.segment_mask(mrml_context, ours, ours_id, ct)
    assert expected.sum() == 1000 and np.array_equal(expected, mask)  # Slicer's own round trip is exact
    assert np.array_equal(got, expected)


def test_segments_written_into_a_new_segmentation_are_visible(mrml_context):
    """A segmentation made in the panel ("Create new") gets a display node, the CT's geometry and transform."""
    from LungDDPMSlicerLib import mrml

    scene = mrml_context.scene
    ct = volume(scene, "vtkMRMLScalarVolumeNode", "CT", np.zeros(SHAPE, dtype=np.int16))
    ct.SetAndObserveTransformNodeID(linear_transform(scene, (0.0, 0.0, 12.0)).GetID())
    created = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "made by the selector")
    assert created.GetDisplayNode() is None  # what qMRMLNodeComboBox's "Create new" leaves
    mrml.prepare_segmentation(created, ct)
    display = created.GetDisplayNode()
    assert display is not None and display.GetVisibility()
    assert created.GetTransformNodeID() == ct.GetTransformNodeID()
    geometry = created.GetSegmentation().GetConversionParameter("Reference image geometry")
    assert geometry and geometry.endswith(";")

    bare = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scripted, no display")
    segment_id = mrml.add_segment(bare, ct, mrml.SegmentData("lung", box_mask()))
    assert bare.GetDisplayNode() is not None and bare.GetDisplayNode().GetSegmentVisibility(segment_id)


def test_the_embedded_segment_editor_has_one_node_of_its_own(mrml_context):
    """The panel's Segment Editor node is a singleton apart from the Segment Editor module's; asked twice, one node."""
    from LungDDPMSlicerLib import mrml

    scene = mrml_context.scene
    first = mrml.segment_editor_node(scene)
    assert first.IsA("vtkMRMLSegmentEditorNode") and first.GetSingletonTag() == mrml.SEGMENT_EDITOR_TAG
    assert mrml.segment_editor_node(scene) is first
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1


def test_sample_data_phantom_loads_as_a_ct_and_a_ready_layout(mrml_context, tmp_path):
    """The registered sample: the engine's phantom CT and layout; exported again, the layout is the file's."""
    import SimpleITK as sitk
    from LungDDPMSlicerLib import engine, mrml, sample
    from slicer_testing import MODULE_DIR

    ct_path, layout_path = sample.write_demo_phantom(engine.find_engine_dir(MODULE_DIR), tmp_path / "sample")
    ct, segmentation = sample.load_demo_sample(mrml_context, ct_path, layout_path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(layout_path)))
    assert np.array_equal(mrml.volume_array(ct), sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path))))
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["lung"] + [f"nodule {n}" for n in range(1, sample.SAMPLE_NODULES + 1)]
    ids = [segmentation.GetSegmentation().GetNthSegmentID(n) for n in range(len(names))]
    exported = mrml.export_layout(mrml_context, ct, segmentation, ids[0], ids[1:], tmp_path / "export")
    assert np.array_equal(exported.layout, labels)
