"""The live nodule preview of click-to-place, Qt-free: a sphere of the chosen diameter at the last placed point.

The point list's last control point is the nodule's centre: the user places it in any view (a persistent place
mode), drags it to move the sphere, changes the diameter to resize it, and commits it with Add nodule, which
writes the real nodule segment and removes the preview. The sphere is a semi-transparent model node shown in
every view (slice intersections and 3-D), not part of the layout.
"""

from __future__ import annotations

import vtk

PREVIEW_NAME = "LungDDPM nodule preview"
PREVIEW_COLOR = (0.90, 0.25, 0.20)  # jobs.NODULE_COLOR
PREVIEW_OPACITY = 0.4
SPHERE_RESOLUTION = 24


def update_preview(scene: object, markups_node: object | None, diameter_mm: float, model_node: object | None = None
                   ) -> object | None:
    """Show (or move/resize) the preview sphere at the last control point of markups_node; returns its model node.

    Without a point list or a placed point the preview is removed and None returned.
    """
    count = markups_node.GetNumberOfControlPoints() if markups_node is not None else 0
    if count == 0:
        remove_preview(scene, model_node)
        return None
    centre = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(count - 1, centre)
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(centre)
    sphere.SetRadius(float(diameter_mm) / 2.0)
    sphere.SetThetaResolution(SPHERE_RESOLUTION)
    sphere.SetPhiResolution(SPHERE_RESOLUTION)
    sphere.Update()
    if model_node is None or scene.GetNodeByID(model_node.GetID()) is None:
        model_node = scene.AddNewNodeByClass("vtkMRMLModelNode", PREVIEW_NAME)
        model_node.SetHideFromEditors(True)
        model_node.SetSelectable(False)
        model_node.CreateDefaultDisplayNodes()
        display = model_node.GetDisplayNode()
        display.SetColor(*PREVIEW_COLOR)
        display.SetOpacity(PREVIEW_OPACITY)
        display.SetVisibility2D(True)
    model_node.SetAndObservePolyData(sphere.GetOutput())
    return model_node


def remove_preview(scene: object, model_node: object | None) -> None:
    """Remove the preview sphere (and its display node) from the scene, if it is there."""
    if model_node is None or scene.GetNodeByID(model_node.GetID()) is None:
        return
    display = model_node.GetDisplayNode()
    if display is not None:
        scene.RemoveNode(display)
    scene.RemoveNode(model_node)
