"""Nodule annotations drawn on DICOM slices: LIDC-IDRI reading sessions (50 % consensus) and Pascal-VOC boxes.

Both describe nodules slice by slice in pixel coordinates (x = column, y = row) of a DICOM image,
named by the slice's SOPInstanceUID and/or its z position. ``SliceMap`` takes such pixels to voxels
of the CT grid: through the slice's DICOM geometry (position, orientation, pixel spacing) when the
DICOM headers are known, else as (i, j) = (x, y) on the CT slice whose z is nearest.

LIDC-IDRI: every ``readingSession`` (one radiologist) lists ``unblindedReadNodule`` elements, each
with ``roi`` contours (``imageZposition``, ``imageSOP_UID``, ``inclusion``, ``edgeMap`` points). A
contour marks the pixels on its outline and inside it (``inclusion`` FALSE: a hole, removed). The
readers' nodules are grouped into one nodule when they overlap or their centroids lie within
``MATCH_MM``; the nodule is the set of voxels marked by at least half of the readers who annotated
it (pylidc's ``consensus(clevel=0.5)``). Each reader's ``characteristics`` of a nodule (rated for nodules
of 3 mm or more) are kept with the outline; a consensus nodule carries their summary over the readers who
rated it (``attributes.reader_summary``: the mean of ordinal ratings, the most frequent category).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, index_to_physical, physical_to_index
from lungddpm.layout.attributes import CHARACTERISTICS, NoduleAttributes, reader_summary

MATCH_MM = 5.0  # two readers' nodules are the same nodule when their centroids are this close (or they overlap)
CONSENSUS_LEVEL = 0.5
READERS_PER_FILE = 1000  # reader numbers of the n-th XML file of a case start at n * READERS_PER_FILE


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str | None:
    """Text of the first direct child with a local tag name, or None."""
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


@dataclass
class SliceInfo:
    """Geometry of one DICOM slice: position of pixel (0, 0), row and column directions, pixel spacing."""

    position: np.ndarray
    row_dir: np.ndarray  # direction of increasing column index x
    col_dir: np.ndarray  # direction of increasing row index y
    spacing_xy: tuple[float, float]


@dataclass
class DicomHeaders:
    """What preparation reads from a DICOM series' headers."""

    slices: dict[str, SliceInfo] = field(default_factory=dict)  # by SOPInstanceUID
    patient_id: str | None = None
    contrast_agent: str | None = None


def read_dicom_headers(folder: str | Path) -> DicomHeaders:
    """SOPInstanceUID -> slice geometry, PatientID and ContrastBolusAgent of the DICOM files in a folder."""
    headers = DicomHeaders()
    reader = sitk.ImageFileReader()
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # not a DICOM image (e.g. a DICOMDIR or a text file)
        meta = {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()}
        if "0008|0018" not in meta or "0020|0032" not in meta:
            continue
        orientation = np.array([float(v) for v in meta.get("0020|0037", "1\\0\\0\\0\\1\\0").split("\\")])
        row_spacing, col_spacing = (float(v) for v in meta.get("0028|0030", "1\\1").split("\\"))
        headers.slices[meta["0008|0018"]] = SliceInfo(np.array([float(v) for v in meta["0020|0032"].split("\\")]),
                                                      orientation[:3], orientation[3:], (col_spacing, row_spacing))
        headers.patient_id = headers.patient_id or meta.get("0010|0020") or None
        headers.contrast_agent = headers.contrast_agent or meta.get("0018|0010") or None
    return headers


class SliceMap:
    """Maps pixels (x, y) of an annotated slice (by SOPInstanceUID or z in mm) to voxels (k, j, i) of a CT."""

    def __init__(self, ct: Volume, headers: DicomHeaders | None = None) -> None:
        self.ct = ct
        self.headers = headers or DicomHeaders()
        nk = ct.array.shape[0]
        self.slice_z = index_to_physical(ct, np.stack([np.zeros(nk), np.zeros(nk), np.arange(nk)], axis=1))[:, 2]
        self.tolerance = 0.5 * abs(float(np.median(np.diff(self.slice_z)))) if nk > 1 else 0.5

    def voxels(self, xy: np.ndarray, uid: str | None = None, z: float | None = None) -> np.ndarray | None:
        """(n, 3) voxel indices (k, j, i) inside the CT for pixels xy (n, 2), or None when the slice is not in the CT."""
        info = self.headers.slices.get(uid) if uid else None
        if info is not None:
            points = info.position + np.outer(xy[:, 0] * info.spacing_xy[0], info.row_dir) + np.outer(xy[:, 1] * info.spacing_xy[1], info.col_dir)
            ijk = np.rint(physical_to_index(self.ct, points)).astype(int)
        elif z is not None:
            k = int(np.argmin(np.abs(self.slice_z - z)))
            if abs(self.slice_z[k] - z) > self.tolerance:
                return None
            ijk = np.column_stack([xy[:, 0], xy[:, 1], np.full(len(xy), k)]).astype(int)
        else:
            return None
        inside = np.all((ijk >= 0) & (ijk < np.array(self.ct.array.shape[::-1])), axis=1)
        if not inside.any():
            return None
        return ijk[inside][:, ::-1]


def polygon_pixels(points: np.ndarray) -> np.ndarray:
    """(n, 2) integer pixels (x, y) on a closed polygon's outline or inside it (even-odd rule at pixel centres)."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    outline = []
    for a, b in zip(points, np.roll(points, -1, axis=0)):
        n = int(np.max(np.abs(b - a))) + 1
        outline.append(np.rint(a + np.linspace(0, 1, n + 1)[:, None] * (b - a)))
    outline = np.concatenate(outline).astype(int)
    lo, hi = points.min(0).astype(int), points.max(0).astype(int)
    xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="xy")
    px, py = xs.ravel().astype(float), ys.ravel().astype(float)
    inside = np.zeros(px.shape, dtype=bool)
    if len(points) >= 3:
        for (x1, y1), (x2, y2) in zip(points, np.roll(points, -1, axis=0)):
            crosses = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (px < x_cross)
    filled = np.column_stack([px[inside], py[inside]]).astype(int)
    return np.unique(np.concatenate([outline, filled]), axis=0)


def _linear(kji: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices of (n, 3) voxel indices."""
    return np.ravel_multi_index(tuple(kji.T), shape)


@dataclass
class ReaderNodule:
    """One radiologist's outline of one nodule, as flat voxel indices of the CT, and the reader's ratings of it."""

    reader: int
    voxels: np.ndarray
    ratings: dict[str, int] = field(default_factory=dict)  # codes by NoduleAttributes field; empty below 3 mm


@dataclass
class ConsensusNodule:
    """One physical nodule: the voxels ≥ level of its readers marked, and the summary of their ratings."""

    voxels: np.ndarray  # flat indices of the CT
    readers: int  # how many readers outlined it
    attributes: NoduleAttributes | None  # None when no reader rated it (nodules < 3 mm)


def _ratings(nodule: ET.Element, where: str) -> dict[str, int]:
    """The codes in an unblindedReadNodule's <characteristics> by field name; a code off its scale is an InputError."""
    element = next((e for e in nodule if _local(e.tag) == "characteristics"), None)
    ratings: dict[str, int] = {}
    for c in CHARACTERISTICS if element is not None else ():
        text = _child_text(element, c.tag)
        if text:
            if not text.isdigit() or not 1 <= int(text) <= c.top:
                raise InputError(f"{where}: <{c.tag}> is {text!r}, not a code 1..{c.top}; repair the rating or "
                                 f"remove the file")
            ratings[c.field] = int(text)
    return ratings


def read_lidc_xml(path: str | Path, slices: SliceMap, reader_offset: int = 0) -> list[ReaderNodule]:
    """Every reader's nodules in an LIDC-IDRI XML file, rasterised on the CT grid (empty ones dropped)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a readable XML file ({exc}); remove or repair it") from None
    shape = slices.ct.array.shape
    nodules = []
    sessions = [e for e in root if _local(e.tag) == "readingSession"]
    for reader, session in enumerate(sessions, start=reader_offset):
        for number, nodule in enumerate(e for e in session if _local(e.tag) == "unblindedReadNodule"):
            ratings = _ratings(nodule, f"{path}: reading session {reader - reader_offset + 1}, nodule {number + 1}")
            keep, holes = set(), set()
            for roi in (e for e in nodule if _local(e.tag) == "roi"):
                xy = np.array([[float(_child_text(p, "xCoord")), float(_child_text(p, "yCoord"))]
                               for p in roi if _local(p.tag) == "edgeMap"])
                if not len(xy):
                    continue
                z = _child_text(roi, "imageZposition")
                kji = slices.voxels(polygon_pixels(xy), uid=_child_text(roi, "imageSOP_UID"), z=float(z) if z else None)
                if kji is None:
                    continue
                flat = set(_linear(kji, shape).tolist())
                (keep if (_child_text(roi, "inclusion") or "TRUE").upper() == "TRUE" else holes).update(flat)
            voxels = np.array(sorted(keep - holes), dtype=np.int64)
            if voxels.size:
                nodules.append(ReaderNodule(reader, voxels, ratings))
    return nodules


def group_nodules(nodules: list[ReaderNodule], ct: Volume, match_mm: float = MATCH_MM) -> list[list[ReaderNodule]]:
    """Readers' nodules grouped into physical nodules: linked when they overlap or their centroids are within match_mm."""
    shape = ct.array.shape
    centroids = [index_to_physical(ct, np.array(np.unravel_index(n.voxels, shape)).T[:, ::-1].mean(0)) for n in nodules]
    parent = list(range(len(nodules)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(len(nodules)):
        for b in range(a + 1, len(nodules)):
            close = np.linalg.norm(centroids[a] - centroids[b]) <= match_mm
            if close or np.intersect1d(nodules[a].voxels, nodules[b].voxels).size:
                parent[find(a)] = find(b)
    groups: dict[int, list[ReaderNodule]] = {}
    for i, n in enumerate(nodules):
        groups.setdefault(find(i), []).append(n)
    return list(groups.values())


def consensus_nodules(nodules: list[ReaderNodule], ct: Volume, level: float = CONSENSUS_LEVEL) -> list[ConsensusNodule]:
    """Per grouped nodule: voxels marked by ≥ level of the readers who annotated it, and their ratings' summary."""
    found = []
    for group in group_nodules(nodules, ct):
        readers = sorted({n.reader for n in group})
        per_reader = [np.unique(np.concatenate([n.voxels for n in group if n.reader == r])) for r in readers]
        voxels, votes = np.unique(np.concatenate(per_reader), return_counts=True)
        rated: dict[int, dict[str, int]] = {}
        for n in group:  # one rating per reader: that of the reader's first rated outline
            if n.ratings:
                rated.setdefault(n.reader, n.ratings)
        consensus = voxels[votes >= level * len(readers)]
        if consensus.size:
            found.append(ConsensusNodule(consensus, len(readers), reader_summary(list(rated.values())) if rated else None))
    return found


def union_mask(nodules: list[ConsensusNodule], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the given shape (the CT's) holding every consensus nodule's voxels."""
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    for nodule in nodules:
        mask[nodule.voxels] = True
    return mask.reshape(shape)


def consensus_mask(nodules: list[ReaderNodule], ct: Volume, level: float = CONSENSUS_LEVEL) -> np.ndarray:
    """Boolean mask on the CT grid: per grouped nodule, voxels marked by ≥ level of the readers who annotated it."""
    return union_mask(consensus_nodules(nodules, ct, level), ct.array.shape)


def _case_readings(xml_files: list[Path], slices: SliceMap) -> list[ReaderNodule]:
    """Every reader's nodules in the LIDC XML files of a case (readers of different files are different readers)."""
    nodules: list[ReaderNodule] = []
    for number, path in enumerate(xml_files):
        nodules += read_lidc_xml(path, slices, reader_offset=READERS_PER_FILE * number)
    return nodules


def lidc_nodules(xml_files: list[Path], slices: SliceMap, level: float = CONSENSUS_LEVEL) -> list[ConsensusNodule]:
    """The consensus nodules of all LIDC XML files of a case, with their readers' ratings summarised."""
    return consensus_nodules(_case_readings(xml_files, slices), slices.ct, level)


def lidc_mask(xml_files: list[Path], slices: SliceMap, level: float = CONSENSUS_LEVEL) -> np.ndarray:
    """The consensus nodule mask of all LIDC XML files of a case."""
    return consensus_mask(_case_readings(xml_files, slices), slices.ct, level)


def is_lidc_xml(path: Path) -> bool:
    """Whether an XML file is an LIDC-IDRI reading message."""
    try:
        return _local(next(ET.iterparse(path, events=("start",)))[1].tag) == "LidcReadMessage"
    except (ET.ParseError, StopIteration):
        return False


def voc_mask(folder: str | Path, slices: SliceMap) -> np.ndarray:
    """Nodule mask from Pascal-VOC boxes (one XML per slice, named by its SOPInstanceUID): the box's inscribed ellipse."""
    mask = np.zeros(slices.ct.array.shape, dtype=bool)
    for path in sorted(Path(folder).glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise InputError(f"{path}: not a readable Pascal-VOC XML file ({exc}); remove or repair it") from None
        for box in root.iter("bndbox"):
            x0, y0, x1, y1 = (float(box.findtext(n)) for n in ("xmin", "ymin", "xmax", "ymax"))
            xs, ys = np.meshgrid(np.arange(int(x0), int(x1) + 1), np.arange(int(y0), int(y1) + 1), indexing="xy")
            rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
            inside = ((xs - (x0 + x1) / 2) / rx) ** 2 + ((ys - (y0 + y1) / 2) / ry) ** 2 <= 1
            kji = slices.voxels(np.column_stack([xs[inside], ys[inside]]), uid=path.stem)
            if kji is not None:
                mask[tuple(kji.T)] = True
    return mask
