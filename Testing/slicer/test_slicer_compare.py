"""The compare view on real MRML layout, slice and slice-composite nodes: shown after a synthesis, and undone."""

from __future__ import annotations

import pytest
from slicer_testing import require_slicer_core

slicer = require_slicer_core(module_level=True)


def views(scene) -> None:
    """A layout node (four-up) and Red/Yellow/Green slice + composite nodes, as Slicer's application creates them."""
    layout = slicer.vtkMRMLLayoutNode()
    scene.AddNode(layout)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # what Slicer's slice logic does first
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # gets the presets (the default node)
        node.SetLayoutName(name)
        node.SetOrientation(orientation)
        scene.AddNode(node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)


def test_compare_shows_both_linked_with_a_fade_and_restores_the_users_views(mrml_context):
    """Side by side, same orientation, linked, fade in Red; restore_view gives back exactly the user's views."""
    from LungDDPMSlicerLib import compare

    scene = mrml_context.scene
    views(scene)
    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    synthetic = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT synthetic")
    users = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "another series")
    red = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    red.SetBackgroundVolumeID(users.GetID())
    red.SetForegroundOpacity(0.2)
    before = compare.save_view(scene)

    previous = compare.show_compare(scene, reference, synthetic, fade=0.3)
    assert previous == before
    composites = compare._nodes(scene, "vtkMRMLSliceCompositeNode")
    slices = compare._nodes(scene, "vtkMRMLSliceNode")
    assert scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement() == compare.COMPARE_LAYOUT
    assert (composites["Red"].GetBackgroundVolumeID(), composites["Red"].GetForegroundVolumeID()) == \
        (reference.GetID(), synthetic.GetID())
    assert composites["Yellow"].GetBackgroundVolumeID() == synthetic.GetID()
    assert composites["Red"].GetLinkedControl() and composites["Yellow"].GetLinkedControl()
    assert slices["Yellow"].GetOrientation() == "Axial" and composites["Red"].GetForegroundOpacity() == 0.3
    compare.set_fade(scene, 1.7)
    assert composites["Red"].GetForegroundOpacity() == 1.0

    compare.restore_view(scene, previous)
    assert compare.save_view(scene) == before
    assert composites["Red"].GetBackgroundVolumeID() == users.GetID() and slices["Yellow"].GetOrientation() == "Sagittal"


def test_click_to_place_preview_follows_the_point_and_the_diameter(mrml_context):
    """The sphere sits at the last placed point with the chosen diameter, moves and resizes with them, and goes."""
    from LungDDPMSlicerLib import preview

    scene = mrml_context.scene
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "centre")
    assert preview.update_preview(scene, points, 10.0) is None  # nothing placed yet
    points.AddControlPointWorld([10.0, -20.0, 30.0])
    sphere = preview.update_preview(scene, points, 10.0)
    # a tessellated sphere: its bounds lie within 1 % of the radius inside the true ones
    assert sphere.GetPolyData().GetBounds() == pytest.approx([5.0, 15.0, -25.0, -15.0, 25.0, 35.0], abs=0.05)
    assert sphere.GetDisplayNode().GetVisibility2D() and sphere.GetDisplayNode().GetOpacity() < 1
    points.SetNthControlPointPositionWorld(0, [0.0, 0.0, 0.0])  # the user drags the point
    assert preview.update_preview(scene, points, 20.0, sphere) is sphere  # and widens the nodule
    assert sphere.GetPolyData().GetBounds() == pytest.approx([-10.0, 10.0, -10.0, 10.0, -10.0, 10.0], abs=0.1)
    models_before = scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    preview.remove_preview(scene, sphere)  # committed with Add nodule
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == models_before - 1
    assert scene.GetNodeByID(sphere.GetID()) is None
