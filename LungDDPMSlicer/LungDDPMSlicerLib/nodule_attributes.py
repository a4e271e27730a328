"""Nodule attributes in Slicer: the engine's schema and prompt parser, segment tags, and the sidecar sent to the engine.

The vocabulary is the engine's own (``lungddpm.layout.attributes``, pure Python), imported from the bundled
engine, so the panel offers exactly the names the engine reads; so are the shape characteristics that Add
nodule paints into the outline for any model (``lungddpm.layout.nodules.SHAPE_FIELDS``). Each nodule segment
carries its known attributes as tags ``LungDDPM.attribute.<characteristic>`` holding the LIDC code (unknown:
no tag). For a synthesis the tags the model takes become the engine's ``.nodules.json`` sidecar (records keyed
by each nodule's centre in mm, written with the engine's own ``layout_records`` / ``write_sidecar``), given
as ``--nodules-json``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import vtk

TAG_PREFIX = "LungDDPM.attribute."
# The characteristics the panel offers, in its order (fields of the engine's NoduleAttributes; checked in Testing/slicer).
PANEL_ATTRIBUTES = ("texture", "margin", "spiculation", "lobulation", "calcification", "sphericity", "malignancy")
UNKNOWN = "unknown"


class NoduleAttributeError(ValueError):
    """Nodule attributes that cannot be sent (e.g. two touching nodule segments asking for different ones)."""


@dataclass(frozen=True)
class Choice:
    """One entry of an attribute's combo box: its label and the LIDC code (None: unknown)."""

    label: str
    code: int | None


def engine_module(engine_dir: Path, name: str) -> ModuleType:
    """A torch-free module of the bundled engine (e.g. 'lungddpm.layout.attributes'), importable from Slicer's Python."""
    if str(engine_dir) not in sys.path:
        sys.path.append(str(engine_dir))
    return importlib.import_module(name)


def schema(engine_dir: Path) -> ModuleType:
    """The engine's attribute schema module: CHARACTERISTICS, BY_FIELD, NoduleAttributes, parse_prompt."""
    return engine_module(engine_dir, "lungddpm.layout.attributes")


def shape_fields(engine_dir: Path) -> tuple[str, ...]:
    """The characteristics Add nodule paints into a nodule's outline, for any model (the engine's SHAPE_FIELDS)."""
    return tuple(engine_module(engine_dir, "lungddpm.layout.nodules").SHAPE_FIELDS)


def choices(schema_module: ModuleType, field: str) -> list[Choice]:
    """'unknown' and then each LIDC value of a characteristic as '<code> <name>' (e.g. '3 part-solid')."""
    characteristic = schema_module.BY_FIELD[field]
    return [Choice(UNKNOWN, None)] + [Choice(f"{code} {name}", code) for code, name in enumerate(characteristic.values, 1)]


def parse_prompt(schema_module: ModuleType, text: str) -> dict[str, float]:
    """The characteristics a prompt names, by field (the engine's parse_prompt; its InputError on an unknown word).

    The diameter is not an attribute of a segment (its size is the segment's), so it is left out.
    """
    values = schema_module.parse_prompt(text).to_dict()
    return {field: value for field, value in values.items() if field in schema_module.BY_FIELD}


def attribute_tags(values: Mapping[str, float | None]) -> dict[str, str]:
    """Segment tags of the known values ({'texture': 3} -> {'LungDDPM.attribute.texture': '3'})."""
    return {TAG_PREFIX + field: f"{value:g}" for field, value in values.items() if value is not None}


def set_attribute_tags(segmentation_node: object, segment_id: str, fields: Sequence[str],
                       values: Mapping[str, float | None]) -> None:
    """Set a segment's attribute tags of these fields to the known values (a field without a value becomes unknown)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    for field in fields:
        segment.RemoveTag(TAG_PREFIX + field)
    for tag, value in attribute_tags({f: v for f, v in values.items() if f in fields}).items():
        segment.SetTag(tag, value)


def segment_attributes(segmentation_node: object, segment_id: str, fields: Sequence[str]) -> dict[str, float]:
    """The attribute values of these fields that a segment's tags hold (unknown ones left out)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    values = {}
    for field in fields:
        value = vtk.reference("")
        if segment.GetTag(TAG_PREFIX + field, value):
            values[field] = float(value.get())
    return values


def write_nodule_sidecar(engine_dir: Path, layout_path: Path, nodules: Sequence[tuple[str, np.ndarray, Mapping[str, float]]]
                         ) -> Path | None:
    """Write the engine's sidecar of layout_path for the nodules that have attributes; its path (None: none have).

    nodules: (segment name, boolean (k, j, i) mask on the layout grid, attribute values) per nodule segment.
    Each segment is matched to the layout's nodule component holding most of its voxels; segments that form
    one nodule must ask for the same attributes.
    """
    described = [(name, mask, values) for name, mask, values in nodules if values]
    if not described:
        return None
    attributes = schema(engine_dir)
    volume = engine_module(engine_dir, "lungddpm.io.volume")
    sidecar = engine_module(engine_dir, "lungddpm.layout.sidecar")
    layout = volume.read_volume(layout_path)
    components, _ = sidecar.nodule_components(layout)
    by_component: dict[int, object] = {}
    names: dict[int, str] = {}
    for name, mask, values in described:
        inside = components[mask & (components > 0)]
        if inside.size == 0:
            raise NoduleAttributeError(f"nodule segment {name!r} holds no nodule voxel of the layout")
        component = int(np.bincount(inside).argmax())
        record = attributes.NoduleAttributes(**values)
        if component in by_component and by_component[component] != record:
            raise NoduleAttributeError(f"nodule segments {names[component]!r} and {name!r} touch and form one nodule, but ask "
                                  f"for different attributes; give them the same attributes or separate them")
        by_component[component], names[component] = record, name
    records = [r for r in sidecar.layout_records(layout, by_component) if r.component in by_component]
    return sidecar.write_sidecar(layout_path, records)
