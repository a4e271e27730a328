"""All MRML work of the module, Qt-free: it takes the scene and logics as arguments and runs inside Slicer or headless.

Export: a CT volume node and chosen segments -> NRRD files on the CT's exact grid (an engine-ready layout,
0 background, 1 lung, 2 nodule). Import: the engine's NRRD output -> a volume node with exactly the
reference's geometry, a segmentation of the layout, provenance attributes, subject-hierarchy placement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from .geometry import GeometryError, LpsGeometry, ijk_to_ras_from_lps_geometry, lps_geometry_from_ijk_to_ras, same_matrix

BACKGROUND, LUNG, NODULE = 0, 1, 2
ATTRIBUTE_PREFIX = "LungDDPM."
# NRRD header keys written by `lungddpm synthesize` that become node attributes LungDDPM.<key>.
PROVENANCE_KEYS = ("SYNTHETIC", "model", "model_sha256", "profile", "sampler", "steps", "seed", "device",
                   "lungddpm_version", "aas_variant", "model_weights", "sampling_seconds", "blend_margin_mm",
                   "precision", "patches", "patch_spacing_mm", "attribute_schema", "guidance", "nodule_attributes",
                   "nodule_attributes_from")


class ExportError(ValueError):
    """Inputs that cannot be exported for synthesis (missing segment, empty lung, non-scalar volume)."""


@dataclass
class MrmlContext:
    """The scene and module logics the MRML functions need: Slicer's own inside Slicer, bootstrapped ones headless."""

    scene: object  # vtkMRMLScene
    segmentations_logic: object  # vtkSlicerSegmentationsModuleLogic
    application_logic: object | None = None  # vtkSlicerApplicationLogic; None: results are not shown in views


@dataclass
class SegmentData:
    """One segment as a boolean (k, j, i) mask on the reference grid, with its name, colour and tags."""

    name: str
    mask: np.ndarray
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class LayoutExport:
    """What was written for the engine: the file paths and the segments the layout was made from."""

    reference_path: Path
    layout_path: Path
    layout: np.ndarray
    lung: SegmentData
    nodules: list[SegmentData]


# ----------------------------------------------------------------------------------------------------------
# Arrays and geometry of nodes


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ijk_to_ras(volume_node: object) -> np.ndarray:
    """The IJK-to-RAS matrix of a volume node as a 4x4 array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def volume_array(volume_node: object) -> np.ndarray:
    """A copy of a scalar volume node's voxels, indexed (k, j, i)."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ExportError(f"volume {volume_node.GetName()!r} holds no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ExportError(f"volume {volume_node.GetName()!r} has {image.GetNumberOfScalarComponents()} components "
                          f"per voxel; choose a scalar CT volume")
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()


def write_image(array: np.ndarray, geometry: LpsGeometry, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a (k, j, i) array with an LPS geometry as a compressed NRRD (or any SimpleITK format by extension)."""
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def read_image(path: Path) -> tuple[np.ndarray, LpsGeometry, dict[str, str]]:
    """A (k, j, i) array, its LPS geometry and its header key/value pairs, read from an image file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    metadata = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    geometry = LpsGeometry(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()))
    return sitk.GetArrayFromImage(image), geometry, metadata


def write_volume_node(volume_node: object, path: Path) -> Path:
    """Write a scalar volume node (voxels in its own coordinates, pixel type kept) as NRRD for the engine."""
    return write_image(volume_array(volume_node), lps_geometry_from_ijk_to_ras(ijk_to_ras(volume_node)), path)


# ----------------------------------------------------------------------------------------------------------
# Export of segments and of the layout


def segment_ids(segments: str | Sequence[str]) -> list[str]:
    """One segment ID, or several (e.g. five lobes chosen as lung), as a list."""
    return [segments] if isinstance(segments, str) else list(segments)


def segment_mask(context: MrmlContext, segmentation_node: object, segments: str | Sequence[str],
                 reference_volume: object) -> np.ndarray:
    """A boolean (k, j, i) mask of a segment, or the union of several, on the reference volume's grid; the scene
    is left as it was.

    Uses ExportSegmentsToLabelmapNode with the reference volume (transforms between the segmentation and the
    volume are applied, the extent is the volume's), through a temporary labelmap node that is removed again
    together with the display and colour-table nodes the export creates.
    """
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids(segments):
        if segmentation.GetSegment(segment_id) is None:
            raise ExportError(f"segmentation {segmentation_node.GetName()!r} has no segment with ID {segment_id!r}")
        ids.InsertNextValue(segment_id)
    labelmap = context.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LungDDPM_export__")
    try:
        if not context.segmentations_logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_volume):
            raise ExportError(f"segments {segment_ids(segments)} could not be exported onto the grid of "
                              f"{reference_volume.GetName()!r}")
        mask = volume_array(labelmap) != 0
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None:
            if display.GetColorNode() is not None:
                context.scene.RemoveNode(display.GetColorNode())
            context.scene.RemoveNode(display)
        context.scene.RemoveNode(labelmap)
    return mask


def segment_data(context: MrmlContext, segmentation_node: object, segments: str | Sequence[str],
                 reference_volume: object) -> SegmentData:
    """A segment's mask on the reference grid with its name and colour; several segments: their union, 'lung'."""
    ids = segment_ids(segments)
    mask = segment_mask(context, segmentation_node, ids, reference_volume)
    first = segmentation_node.GetSegmentation().GetSegment(ids[0])
    return SegmentData(first.GetName() if len(ids) == 1 else "lung", mask, tuple(first.GetColor()))


def compose_layout(lung: np.ndarray, nodules: Sequence[np.ndarray]) -> np.ndarray:
    """The uint8 layout: 1 where lung, 2 where any nodule (a nodule wins over lung), else 0."""
    layout = np.where(lung, LUNG, BACKGROUND).astype(np.uint8)
    for nodule in nodules:
        layout[nodule] = NODULE
    return layout


def export_layout(context: MrmlContext, reference_volume: object, segmentation_node: object,
                  lung_segments: str | Sequence[str], nodule_segment_ids: Sequence[str], folder: Path) -> LayoutExport:
    """Write reference.nrrd (the CT) and layout.nrrd (0/1/2 on the CT grid) into folder; the scene is unchanged.

    lung_segments: the segment that holds the lungs, or several (e.g. five lobes) whose union is the lung.
    """
    lung_ids = segment_ids(lung_segments)
    if not lung_ids:
        raise ExportError("no lung segment is chosen; choose the segment(s) that hold the lungs")
    if set(lung_ids) & set(nodule_segment_ids):
        raise ExportError("a lung segment is also chosen as a nodule; choose different segments")
    lung = segment_data(context, segmentation_node, lung_ids, reference_volume)
    if not lung.mask.any():
        raise ExportError(f"lung segment {lung.name!r} is empty on the grid of {reference_volume.GetName()!r}; "
                          f"paint it or use 'Create lung segment'")
    nodules = [segment_data(context, segmentation_node, sid, reference_volume) for sid in nodule_segment_ids]
    empty = [n.name for n in nodules if not n.mask.any()]
    if empty:
        raise ExportError(f"nodule segment(s) {empty} are empty on the grid of {reference_volume.GetName()!r}")
    layout = compose_layout(lung.mask, [n.mask for n in nodules])
    geometry = lps_geometry_from_ijk_to_ras(ijk_to_ras(reference_volume))
    reference_path = write_volume_node(reference_volume, folder / "reference.nrrd")
    layout_path = write_image(layout, geometry, folder / "layout.nrrd")
    return LayoutExport(reference_path, layout_path, layout, lung, nodules)


# ----------------------------------------------------------------------------------------------------------
# Import of results


def add_volume_from_array(context: MrmlContext, array: np.ndarray, matrix: np.ndarray, name: str) -> object:
    """A new scalar volume node holding a copy of a (k, j, i) array with the given IJK-to-RAS matrix."""
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(array_to_matrix(matrix))
    node.CreateDefaultDisplayNodes()
    return node


def check_on_reference_grid(array: np.ndarray, geometry: LpsGeometry, reference_volume: object, path: Path) -> None:
    """Raise GeometryError unless an image read from path lies on the reference volume's grid."""
    expected_shape = reference_volume.GetImageData().GetDimensions()[::-1]
    if array.shape != tuple(expected_shape):
        raise GeometryError(f"{path.name}: size {array.shape[::-1]} differs from the reference's {expected_shape[::-1]}")
    if not same_matrix(ijk_to_ras_from_lps_geometry(geometry), ijk_to_ras(reference_volume)):
        raise GeometryError(f"{path.name}: its grid differs from the reference volume {reference_volume.GetName()!r}")


def import_synthetic_volume(context: MrmlContext, path: Path, reference_volume: object, name: str) -> object:
    """Load the engine's synthetic CT as a new volume node on exactly the reference's grid, with provenance.

    The file must lie on the reference grid (checked to 1e-4 voxel); the node then takes the reference's own
    IJK-to-RAS matrix, so that no rounding through the file header moves it, and the reference's parent transform.
    """
    array, geometry, metadata = read_image(path)
    check_on_reference_grid(array, geometry, reference_volume, path)
    node = add_volume_from_array(context, array, ijk_to_ras(reference_volume), name)
    node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
    copy_window_level(reference_volume, node)
    set_provenance(node, metadata)
    return node


def copy_window_level(source: object, target: object) -> None:
    """Give target the window/level and colour table of source, so the two compare at a glance."""
    source_display, target_display = source.GetDisplayNode(), target.GetDisplayNode()
    if source_display is None or target_display is None:
        return
    target_display.SetAutoWindowLevel(False)
    target_display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
    target_display.SetAndObserveColorNodeID(source_display.GetColorNodeID())


def set_provenance(node: object, metadata: Mapping[str, str]) -> None:
    """Store the engine's provenance header keys as node attributes LungDDPM.<key>; SYNTHETIC is always set."""
    for key in PROVENANCE_KEYS:
        if key in metadata:
            node.SetAttribute(ATTRIBUTE_PREFIX + key, str(metadata[key]))
    node.SetAttribute(ATTRIBUTE_PREFIX + "SYNTHETIC", "true")


def provenance(node: object) -> dict[str, str]:
    """The LungDDPM.* attributes of a node, without the prefix."""
    names = node.GetAttributeNames() or ()
    return {n[len(ATTRIBUTE_PREFIX):]: node.GetAttribute(n) for n in names if n.startswith(ATTRIBUTE_PREFIX)}


def oriented_mask(mask: np.ndarray, matrix: np.ndarray) -> object:
    """A vtkOrientedImageData (uint8 0/1) of a (k, j, i) mask with the given IJK-to-RAS matrix."""
    import slicer  # vtkOrientedImageData comes from Slicer's segmentation core (also in the slicer-core wheel)

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True))
    image.SetImageToWorldMatrix(array_to_matrix(matrix))
    return image


def add_segment(segmentation_node: object, reference_volume: object, segment: SegmentData) -> str:
    """Add a segment from a mask on the reference grid; returns its new segment ID.

    Like Slicer's ImportLabelmapToSegmentationNode, the mask is carried through the transform between the
    reference volume's and the segmentation's parent transforms (linear: exactly, by its geometry; otherwise
    resampled), so that it lands on the reference's voxels in world space. A segmentation without a display
    node gets one, so the new segment is visible.
    """
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", segment.name, list(segment.color))
    for tag, value in segment.tags.items():
        segmentation.GetSegment(segment_id).SetTag(tag, value)
    image = oriented_mask(segment.mask, ijk_to_ras(reference_volume))
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(reference_volume.GetParentTransformNode(),
                                                         segmentation_node.GetParentTransformNode(), transform)
    slicer.vtkOrientedImageDataResample.TransformOrientedImage(image, transform)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id):
        segmentation.RemoveSegment(segment_id)
        raise ExportError(f"segment {segment.name!r} could not be written into {segmentation_node.GetName()!r}")
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    return segment_id


def prepare_segmentation(segmentation_node: object, reference_volume: object | None) -> None:
    """Make a new, empty segmentation usable: a display node, and the reference CT's geometry and parent transform."""
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        segmentation_node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())


SEGMENT_EDITOR_TAG = "LungDDPM"  # singleton tag of the module's Segment Editor node (apart from the Segment Editor module's)


def segment_editor_node(scene: object) -> object:
    """The scene's Segment Editor node of this module (a singleton, created on first use), as Slicer's modules do."""
    node = scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(SEGMENT_EDITOR_TAG)
        node = scene.AddNode(node)
    return node


def segment_tag(segmentation_node: object, segment_id: str, tag: str) -> str:
    """The value of a segment's tag ('' when the segment or the tag is missing)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.reference("")
    return value.get() if segment is not None and segment.GetTag(tag, value) else ""


def create_segmentation(context: MrmlContext, reference_volume: object, name: str, segments: Sequence[SegmentData]) -> object:
    """A new segmentation node on the reference's grid (and parent transform) holding the given segments."""
    node = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
    for segment in segments:
        add_segment(node, reference_volume, segment)
    return node


def layout_segments(labels: np.ndarray, exported: LayoutExport) -> list[SegmentData]:
    """The layout an output was made from as segments: lung (label 1) and each input nodule (label 2), named as input.

    Label-2 voxels are split among the input nodules by their masks; a voxel of two overlapping nodules goes
    to both, like in the input segmentation.
    """
    if labels.shape != exported.layout.shape or not np.array_equal(labels, exported.layout):
        raise GeometryError("the engine's label output differs from the layout that was sent; the result is not used")
    segments = [SegmentData(exported.lung.name, labels == LUNG, exported.lung.color)]
    segments += [SegmentData(n.name, (labels == NODULE) & n.mask, n.color) for n in exported.nodules]
    return segments


# ----------------------------------------------------------------------------------------------------------
# Placement in the scene


def place_beside(context: MrmlContext, node: object, reference_node: object) -> None:
    """Put node in the subject-hierarchy folder (e.g. study) of the reference node, creating its item if needed.

    Inside Slicer every node gets an item when it is added; headless (no Qt plugin logic) items are created here.
    """
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    reference_item = sh.GetItemByDataNode(reference_node)
    parent = sh.GetItemParent(reference_item) if reference_item else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def show_volume(context: MrmlContext, volume_node: object) -> None:
    """Show a volume as background in all slice views (no-op without an application logic)."""
    if context.application_logic is None:
        return
    selection = context.application_logic.GetSelectionNode()
    selection.SetActiveVolumeID(volume_node.GetID())
    selection.SetActiveLabelVolumeID(None)
    context.application_logic.PropagateVolumeSelection(0)


def world_to_volume_ras(point_world_ras: Sequence[float], volume_node: object) -> np.ndarray:
    """A world RAS point expressed in the volume's own (untransformed) RAS coordinates."""
    import slicer

    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), transform)
    return np.array(transform.TransformPoint([float(v) for v in point_world_ras]))
