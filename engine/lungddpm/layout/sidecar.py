"""The nodules of a layout and their attribute records: components, centres, and the ``.nodules.json`` sidecar.

A nodule is a 26-connected component of label 2, numbered 1..n as SimpleITK's ``ConnectedComponent``
numbers them (the order in which a raster scan, k slowest, first meets each). Its centre is the mean LPS
position (mm) of its voxels, or its voxel nearest that mean when the mean lies outside it (a crescent),
so that a centre always lies in its nodule; its diameter is the equivalent-sphere diameter of its volume.

The sidecar of ``<dir>/<stem>.nrrd`` (any volume suffix) is ``<dir>/<stem>.nodules.json``: one record per
described nodule, naming its component and centre, with its ``NoduleAttributes``. Component numbers change
when a layout is edited, resampled or cropped; centres in mm do not, so ``match_records`` finds each record's
nodule in a layout by its centre and refuses a record whose centre lies in no nodule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.atomic import write_text
from lungddpm.io.volume import READABLE_SUFFIXES, Volume, index_to_physical, physical_to_index
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import NODULE
from lungddpm.layout.nodules import KIND_TEXTURE

SIDECAR_SUFFIX = ".nodules.json"
SIDECAR_FORMAT = "lungddpm nodule attributes"
SIDECAR_VERSION = 1
CENTRE_DECIMALS = 3  # mm: a micrometre, far below any voxel


@dataclass(frozen=True)
class NoduleRecord:
    """One nodule of a layout: its component number, its centre (LPS mm) and what is known of it."""

    component: int
    center_lps_mm: tuple[float, float, float]
    attributes: NoduleAttributes

    def to_dict(self) -> dict:
        """The record as a JSON object."""
        return {"component": self.component, "center_lps_mm": list(self.center_lps_mm),
                "attributes": self.attributes.to_dict()}


def nodule_components(layout: Volume) -> tuple[np.ndarray, int]:
    """26-connected components of the nodule label: a label array (k, j, i) and their number."""
    mask = sitk.GetImageFromArray((layout.array == NODULE).astype(np.uint8))
    labels = sitk.ConnectedComponent(mask, True)
    array = sitk.GetArrayFromImage(labels)
    return array, int(array.max())


def equivalent_diameter_mm(voxels: int, spacing: Sequence[float]) -> float:
    """Diameter (mm, to 0.01) of the sphere with the volume of `voxels` voxels of the spacing."""
    return round(float((6 * voxels * float(np.prod(spacing)) / np.pi) ** (1 / 3)), 2)


def component_centres_mm(layout: Volume, components: np.ndarray, count: int) -> list[tuple[float, float, float]]:
    """The centre (LPS mm) of components 1..count: the voxel mean, or the component voxel nearest it."""
    centres = []
    for label in range(1, count + 1):
        kji = np.argwhere(components == label)
        mean = kji.mean(axis=0)
        voxel = tuple(np.rint(mean).astype(int))
        if components[voxel] != label:
            voxel = tuple(kji[np.argmin(np.square((kji - mean) * np.asarray(layout.spacing)[::-1]).sum(axis=1))])
            mean = np.asarray(voxel, dtype=float)
        centres.append(tuple(round(float(v), CENTRE_DECIMALS) for v in index_to_physical(layout, mean[::-1])))
    return centres


def layout_records(layout: Volume, attributes: Mapping[int, NoduleAttributes] | None = None) -> list[NoduleRecord]:
    """A record per nodule of the layout: centre, equivalent diameter and the given attributes (by component)."""
    components, count = nodule_components(layout)
    voxels = np.bincount(components.ravel(), minlength=count + 1)
    known = attributes or {}
    unknown = sorted(set(known) - set(range(1, count + 1)))
    if unknown:
        raise InputError(f"nodule attributes name component(s) {unknown}, but the layout has {count} nodule(s) "
                         f"(1..{count}); number them as nodule_components does")
    records = []
    for label, centre in enumerate(component_centres_mm(layout, components, count), start=1):
        given = known.get(label, NoduleAttributes())
        measured = NoduleAttributes(**{**given.to_dict(),
                                       "diameter_mm": equivalent_diameter_mm(int(voxels[label]), layout.spacing)})
        records.append(NoduleRecord(label, centre, measured))
    return records


def sidecar_path(layout_path: str | Path) -> Path:
    """Where a layout's nodule sidecar lies: the layout's name with its volume suffix replaced by .nodules.json."""
    path = Path(layout_path)
    suffix = next((s for s in READABLE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    return path.with_name(path.name[:len(path.name) - len(suffix)] + SIDECAR_SUFFIX)


def write_sidecar(layout_path: str | Path, records: Iterable[NoduleRecord]) -> Path:
    """Write the records as the layout's sidecar; returns its path."""
    path = sidecar_path(layout_path)
    document = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "layout": Path(layout_path).name,
                "nodules": [r.to_dict() for r in records]}
    return write_text(path, json.dumps(document, indent=2) + "\n")


def read_sidecar(layout_path: str | Path) -> list[NoduleRecord]:
    """The records of a layout's sidecar; a missing, unreadable or foreign file is an InputError."""
    path = sidecar_path(layout_path)
    if not path.is_file():
        raise InputError(f"{path}: no nodule sidecar next to the layout; write one (write_sidecar) or omit it")
    return read_sidecar_file(path)


def read_sidecar_file(path: str | Path) -> list[NoduleRecord]:
    """The records of a sidecar file given by its own path; an unreadable or foreign file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such nodule sidecar; give a <layout>.nodules.json file (write_sidecar writes one)")
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not a {SIDECAR_FORMAT!r} version {SIDECAR_VERSION} file ({exc}); "
                         f"rewrite it with write_sidecar") from None
    return parse_sidecar(document, str(path))


def parse_sidecar(document: object, name: str) -> list[NoduleRecord]:
    """The records of a sidecar document already read (a server job's option, a file's JSON); InputError naming `name`."""
    try:
        if document.get("format") != SIDECAR_FORMAT or document.get("version") != SIDECAR_VERSION:  # type: ignore[union-attr]
            raise ValueError(f"format {document.get('format')!r} version {document.get('version')!r}")  # type: ignore[union-attr]
        return [_record(n) for n in document["nodules"]]  # type: ignore[index]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{name}: not a {SIDECAR_FORMAT!r} version {SIDECAR_VERSION} file ({exc}); "
                         f"rewrite it with write_sidecar") from None


def _record(entry: Mapping) -> NoduleRecord:
    """One sidecar entry as a record; a malformed one raises ValueError, KeyError or TypeError."""
    centre = tuple(float(v) for v in entry["center_lps_mm"])
    if len(centre) != 3:
        raise ValueError(f"centre {entry['center_lps_mm']!r} is not (x, y, z) mm")
    return NoduleRecord(int(entry["component"]), centre, NoduleAttributes.from_dict(entry.get("attributes", {})))  # type: ignore[arg-type]


def match_records(layout: Volume, records: Iterable[NoduleRecord]) -> dict[int, NoduleAttributes]:
    """Each record's attributes by the layout's component holding its centre; a centre in no nodule is an InputError."""
    components, _ = nodule_components(layout)
    matched: dict[int, NoduleAttributes] = {}
    for record in records:
        index = np.rint(physical_to_index(layout, record.center_lps_mm)).astype(int)[::-1]
        inside = bool(np.all((index >= 0) & (index < components.shape)))
        label = int(components[tuple(index)]) if inside else 0
        if label == 0:
            raise InputError(f"nodule record {record.component} (centre LPS {list(record.center_lps_mm)} mm) lies in no "
                             f"nodule of the layout; drop the record or draw its nodule (label {NODULE}) there")
        if label in matched:
            raise InputError(f"nodule records {record.component} and another both lie in the layout's nodule "
                             f"{label}; keep one record per nodule")
        matched[label] = record.attributes
    return matched


def kind_records(layout: Volume, specs: Iterable[Mapping], earlier: Iterable[NoduleRecord] = ()) -> list[NoduleRecord]:
    """The layout's records: earlier ones kept, each added nodule spec's attributes (its kind as the texture
    (KIND_TEXTURE) unless they give one), by centre."""
    added = [NoduleRecord(0, tuple(spec["center_lps_mm"]), NoduleAttributes(
        **{**({"texture": KIND_TEXTURE[spec["kind"]]} if "kind" in spec else {}), **spec.get("attributes", {})}))
             for spec in specs]
    return layout_records(layout, match_records(layout, [*earlier, *added]))
