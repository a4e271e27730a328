"""The compare view after a synthesis, Qt-free: reference | synthetic side by side, a fade, and a way back.

`show_compare` puts the side-by-side layout on (Red: the reference with the synthetic CT faded over it;
Yellow: the synthetic CT alone, in Red's orientation), links the slice views so they scroll and zoom
together, and returns what the views showed before; `restore_view` puts that back. `set_fade` moves the Red
view between reference (0) and synthetic (1). Both volumes share window/level (mrml.copy_window_level).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import slicer

COMPARE_LAYOUT = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
REFERENCE_VIEW, SYNTHETIC_VIEW = "Red", "Yellow"


@dataclass(frozen=True)
class CompositeState:
    """What one slice view showed: its volumes, the foreground opacity and whether it was linked."""

    background: str | None
    foreground: str | None
    opacity: float
    linked: int


@dataclass(frozen=True)
class ViewState:
    """The layout and every slice view's composite and orientation, to put back with restore_view."""

    layout: int | None
    composites: dict[str, CompositeState] = field(default_factory=dict)
    orientations: dict[str, str] = field(default_factory=dict)


def _nodes(scene: object, cls: str) -> dict[str, object]:
    """The scene's nodes of a class by their view (layout) name."""
    nodes = scene.GetNodesByClass(cls)
    return {nodes.GetItemAsObject(n).GetLayoutName(): nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())}


def _layout_node(scene: object) -> object | None:
    """The scene's layout node (None headless without one)."""
    return scene.GetFirstNodeByClass("vtkMRMLLayoutNode")


def save_view(scene: object) -> ViewState:
    """What the views show now."""
    layout = _layout_node(scene)
    composites = {name: CompositeState(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity(),
                                       c.GetLinkedControl())
                  for name, c in _nodes(scene, "vtkMRMLSliceCompositeNode").items()}
    orientations = {name: s.GetOrientation() for name, s in _nodes(scene, "vtkMRMLSliceNode").items()}
    return ViewState(layout.GetViewArrangement() if layout is not None else None, composites, orientations)


def show_compare(scene: object, reference: object, synthetic: object, fade: float = 0.5) -> ViewState:
    """Side-by-side reference (with the synthetic faded over it) and synthetic, linked; returns the previous views."""
    before = save_view(scene)
    layout = _layout_node(scene)
    if layout is not None:
        layout.SetViewArrangement(COMPARE_LAYOUT)
    composites, slices = _nodes(scene, "vtkMRMLSliceCompositeNode"), _nodes(scene, "vtkMRMLSliceNode")
    if REFERENCE_VIEW in slices and SYNTHETIC_VIEW in slices:
        slices[SYNTHETIC_VIEW].SetOrientation(slices[REFERENCE_VIEW].GetOrientation())
    for name, volume, over in ((REFERENCE_VIEW, reference, synthetic), (SYNTHETIC_VIEW, synthetic, None)):
        if name in composites:
            composites[name].SetBackgroundVolumeID(volume.GetID())
            composites[name].SetForegroundVolumeID(over.GetID() if over is not None else None)
            composites[name].SetLinkedControl(1)
    set_fade(scene, fade)
    return before


def set_fade(scene: object, fade: float) -> None:
    """Show the Red view between the reference (0) and the synthetic CT (1)."""
    composite = _nodes(scene, "vtkMRMLSliceCompositeNode").get(REFERENCE_VIEW)
    if composite is not None:
        composite.SetForegroundOpacity(min(max(float(fade), 0.0), 1.0))


def restore_view(scene: object, state: ViewState) -> None:
    """Put back the layout, volumes, opacities, links and orientations that save_view recorded."""
    layout = _layout_node(scene)
    if layout is not None and state.layout is not None:
        layout.SetViewArrangement(state.layout)
    composites = _nodes(scene, "vtkMRMLSliceCompositeNode")
    for name, saved in state.composites.items():
        if name in composites:
            composite = composites[name]
            composite.SetBackgroundVolumeID(saved.background)
            composite.SetForegroundVolumeID(saved.foreground)
            composite.SetForegroundOpacity(saved.opacity)
            composite.SetLinkedControl(saved.linked)
    slices = _nodes(scene, "vtkMRMLSliceNode")
    for name, orientation in state.orientations.items():
        if name in slices:
            slices[name].SetOrientation(orientation)
