"""The nodule sidecar: records of a layout's nodules written next to it, read back and matched by centre."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.sidecar import (NoduleRecord, layout_records, match_records, read_sidecar, sidecar_path,
                                     write_sidecar)

ORIGIN, SPACING = (-10.0, 20.0, 5.0), (0.5, 0.8, 2.0)  # anisotropic, identity direction: LPS = origin + spacing · ijk


def _layout() -> Volume:
    """Lung (1) everywhere but a border, nodule A: box i 2..5, j 3..6, k 1..3; nodule B: box i 12..13, j 10..13, k 5..6."""
    labels = np.zeros((9, 16, 18), np.uint8)  # (k, j, i)
    labels[1:-1, 1:-1, 1:-1] = 1
    labels[1:4, 3:7, 2:6] = 2
    labels[5:7, 10:14, 12:14] = 2
    return Volume(labels, ORIGIN, SPACING)


SOLID = NoduleAttributes(texture=5, spiculation=4.33, readers=3)
GGO = NoduleAttributes(texture=1, diameter_mm=30)  # a requested diameter: the mask's replaces it


def test_sidecar_path_replaces_the_volume_suffix():
    assert sidecar_path("cases/a/layout.nii.gz") == Path("cases/a/layout.nodules.json")
    assert sidecar_path("layout.nrrd") == Path("layout.nodules.json")
    assert sidecar_path("x.y.mha") == Path("x.y.nodules.json")


def test_records_written_next_to_the_layout_hold_hand_computed_centres(tmp_path):
    layout = _layout()
    write_volume(layout, tmp_path / "case.nrrd")
    records = layout_records(layout, {1: SOLID, 2: GGO})
    path = write_sidecar(tmp_path / "case.nrrd", records)
    assert path == tmp_path / "case.nodules.json"
    # by hand: A's index centre (3.5, 4.5, 2) -> (-10 + 1.75, 20 + 3.6, 5 + 4); 4·4·3 voxels of 0.8 mm³;
    # B's (12.5, 11.5, 5.5) -> (-3.75, 29.2, 16); 2·4·2 voxels
    diameter = {n: round((6 * n * 0.8 / np.pi) ** (1 / 3), 2) for n in (48, 16)}
    assert json.loads(path.read_text()) == {
        "format": "lungddpm nodule attributes", "version": 1, "layout": "case.nrrd",
        "nodules": [
            {"component": 1, "center_lps_mm": [-8.25, 23.6, 9.0],
             "attributes": {"texture": 5, "spiculation": 4.33, "readers": 3, "diameter_mm": diameter[48]}},
            {"component": 2, "center_lps_mm": [-3.75, 29.2, 16.0],
             "attributes": {"texture": 1, "diameter_mm": diameter[16]}}]}
    again = read_sidecar(tmp_path / "case.nrrd")
    assert again == records
    assert match_records(read_volume(tmp_path / "case.nrrd"), again) == {1: records[0].attributes,
                                                                         2: records[1].attributes}


def test_matching_follows_centres_when_the_components_are_renumbered(tmp_path):
    layout = _layout()
    records = layout_records(layout, {1: SOLID, 2: GGO})
    flipped = layout.array[::-1, ::-1, ::-1].copy()  # the same body on an axis-reversed grid: B is met first
    origin = tuple(o + s * (n - 1) for o, s, n in zip(ORIGIN, SPACING, layout.array.shape[::-1]))
    reversed_grid = Volume(flipped, origin, SPACING, (-1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0))
    write_volume(reversed_grid, tmp_path / "flipped.nii.gz")
    write_sidecar(tmp_path / "flipped.nii.gz", records)
    matched = match_records(read_volume(tmp_path / "flipped.nii.gz"), read_sidecar(tmp_path / "flipped.nii.gz"))
    assert matched == {2: records[0].attributes, 1: records[1].attributes}


def test_records_outside_every_nodule_or_doubled_are_refused(tmp_path):
    layout = _layout()
    lung_point = NoduleRecord(1, (-5.0, 25.0, 7.0), SOLID)  # index (10, 6.25, 1): lung, no nodule
    with pytest.raises(InputError, match=r"lies in no nodule of the layout; drop the record or draw its nodule"):
        match_records(layout, [lung_point])
    outside = NoduleRecord(1, (500.0, 0.0, 0.0), SOLID)
    with pytest.raises(InputError, match="lies in no nodule"):
        match_records(layout, [outside])
    first = layout_records(layout)[0]
    with pytest.raises(InputError, match="keep one record per nodule"):
        match_records(layout, [first, NoduleRecord(7, (-8.0, 23.0, 9.0), GGO)])
    with pytest.raises(InputError, match="component"):
        layout_records(layout, {3: SOLID})


def test_unreadable_sidecars_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no nodule sidecar"):
        read_sidecar(tmp_path / "none.nrrd")
    (tmp_path / "bad.nodules.json").write_text('{"format": "something else", "nodules": []}')
    with pytest.raises(InputError, match="not a 'lungddpm nodule attributes' version 1 file"):
        read_sidecar(tmp_path / "bad.nrrd")
    (tmp_path / "flat.nodules.json").write_text('{"format": "lungddpm nodule attributes", "version": 1, '
                                                '"nodules": [{"component": 1, "center_lps_mm": [1, 2]}]}')
    with pytest.raises(InputError, match=r"centre \[1, 2\] is not \(x, y, z\) mm"):
        read_sidecar(tmp_path / "flat.nrrd")
    (tmp_path / "cut.nodules.json").write_text('{"format": "lungddpm nod')
    with pytest.raises(InputError, match="rewrite it with write_sidecar"):
        read_sidecar(tmp_path / "cut.nrrd")


def test_the_centre_of_a_crescent_lies_in_it():
    labels = np.zeros((3, 11, 11), np.uint8)
    labels[1, 2:9, 2:9] = 2
    labels[1, 4:9, 4:7] = 0  # a U open towards +j: its voxel mean (j ≈ 4.56, i = 5) is in the cut-out
    (record,) = layout_records(Volume(labels, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    i, j, k = record.center_lps_mm
    assert labels[int(k), int(j), int(i)] == 2 and (i, j) == (5.0, 3.0)
