"""LIDC-IDRI characteristics: each reader's ratings, and per consensus nodule their summary (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import lidc_message, lidc_roi, lidc_session, lidc_square
from lungddpm.errors import InputError
from lungddpm.io.volume import Volume
from lungddpm.layout.annotations import SliceMap, lidc_mask, lidc_nodules, read_lidc_xml, union_mask
from lungddpm.layout.attributes import NoduleAttributes

TAGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
        "texture", "malignancy")
RATINGS = {  # codes of nodule X in TAGS order, per reader
    "A": (5, 1, 6, 4, 4, 2, 1, 5, 3),
    "B": (4, 1, 3, 5, 5, 1, 2, 5, 4),
    "C": (4, 4, 3, 3, 3, 1, 1, 4, 4),
}
Y_RATINGS = (2, 1, 6, 2, 1, 3, 5, 1, 5)  # nodule Y, rated by reader C alone


def _rated(codes: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(TAGS, codes))


def _case(tmp_path, x_texture_c: int = 4):
    """CT of 8 slices 20 x 20 (z = -10 + 2.5 k); X outlined by A, B, C; a < 3 mm point by B; Y by C."""
    ct = Volume(np.zeros((8, 20, 20), np.int16), origin=(0.0, 0.0, -10.0), spacing=(1.0, 1.0, 2.5))
    x_a = lidc_roi(-5.0, lidc_square(2, 2, 6, 6))
    x_b = lidc_roi(-5.0, lidc_square(3, 3, 7, 7))
    x_c = lidc_roi(-5.0, lidc_square(2, 3, 6, 7)) + lidc_roi(-2.5, lidc_square(2, 3, 6, 7))
    small = lidc_roi(2.5, [(15, 15)])  # no characteristics: LIDC rates nodules of 3 mm or more only
    y = lidc_roi(5.0, lidc_square(14, 1, 16, 3))
    c_codes = RATINGS["C"][:7] + (x_texture_c, RATINGS["C"][8])
    xml = lidc_message(lidc_session((x_a, _rated(RATINGS["A"]))),
                       lidc_session((x_b, _rated(RATINGS["B"])), small),
                       lidc_session((x_c, _rated(c_codes)), (y, _rated(Y_RATINGS))))
    (tmp_path / "case.xml").write_text(xml)
    return ct, SliceMap(ct)


def test_each_reader_keeps_the_ratings_of_each_nodule(tmp_path):
    ct, slices = _case(tmp_path)
    nodules = read_lidc_xml(tmp_path / "case.xml", slices)
    assert [n.reader for n in nodules] == [0, 1, 1, 2, 2]
    fields = ("subtlety", "internal_structure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
              "texture", "malignancy")
    assert nodules[0].ratings == dict(zip(fields, RATINGS["A"]))
    assert nodules[2].ratings == {}  # the < 3 mm point
    assert nodules[4].ratings == dict(zip(fields, Y_RATINGS))


def test_consensus_nodules_carry_the_readers_mean(tmp_path):
    ct, slices = _case(tmp_path)
    found = lidc_nodules([tmp_path / "case.xml"], slices)
    assert np.array_equal(union_mask(found, ct.array.shape), lidc_mask([tmp_path / "case.xml"], slices))
    by_pixel = {}
    for nodule in found:
        k, j, i = np.unravel_index(nodule.voxels[0], ct.array.shape)
        by_pixel[(int(k), int(j), int(i))] = nodule
    x, small, y = by_pixel[(2, 3, 2)], by_pixel[(5, 15, 15)], by_pixel[(6, 1, 14)]
    # X by hand: 2 of 3 readers' squares on k = 2 (C's second slice k = 3 alone is 1 of 3)
    votes = np.zeros((20, 20), int)
    for x0, y0, x1, y1 in ((2, 2, 6, 6), (3, 3, 7, 7), (2, 3, 6, 7)):
        votes[y0:y1 + 1, x0:x1 + 1] += 1
    j, i = np.nonzero(votes >= 2)
    assert sorted(x.voxels.tolist()) == sorted((2 * 400 + j * 20 + i).tolist())
    # means by hand: subtlety (5+4+4)/3, sphericity (4+5+3)/3, margin (4+5+3)/3, lobulation (2+1+1)/3,
    # spiculation (1+2+1)/3, texture (5+5+4)/3, malignancy (3+4+4)/3; categories: internal structure 1 (twice),
    # calcification 3 (twice)
    assert x.readers == 3 and x.attributes == NoduleAttributes(
        subtlety=4.33, internal_structure=1, calcification=3, sphericity=4, margin=4, lobulation=1.33,
        spiculation=1.33, texture=4.67, malignancy=3.67, readers=3)
    assert small.readers == 1 and small.attributes is None
    assert y.readers == 1 and y.attributes == NoduleAttributes(
        subtlety=2, internal_structure=1, calcification=6, sphericity=2, margin=1, lobulation=3, spiculation=5,
        texture=1, malignancy=5, readers=1)


def test_a_rating_off_its_scale_is_refused(tmp_path):
    _, slices = _case(tmp_path, x_texture_c=7)
    with pytest.raises(InputError, match=r"reading session 3, nodule 1: <texture> is '7', not a code 1..5"):
        read_lidc_xml(tmp_path / "case.xml", slices)
