"""The body's envelope and the air outside it (lungddpm.layout.body), on hand-drawn slices with known answers."""

from __future__ import annotations

import numpy as np

from lungddpm.layout.body import PADDING_HU, is_air, outside_air, slice_envelopes


def chest_slice(size: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axial slice: an elliptic body (tissue) holding two elliptic lungs (air); (body, air, lungs) masks."""
    j, i = np.ogrid[:size, :size]
    c = (size - 1) / 2
    body = ((i - c) / (0.45 * size)) ** 2 + ((j - c) / (0.35 * size)) ** 2 <= 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lungs |= ((i - c - side * 0.2 * size) / (0.15 * size)) ** 2 + ((j - c) / (0.2 * size)) ** 2 <= 1
    return body & ~lungs, ~body | lungs, lungs


def test_lungs_cut_by_the_border_are_not_outside_air() -> None:
    """A crop through both lungs (they touch the left and right borders): outside air only in the corners."""
    tissue, air, lungs = chest_slice()
    cut = (slice(None), slice(30, 90))  # the lungs span columns 18..53 and 66..101: both are cut
    tissue, air, lungs = tissue[cut][None], air[cut][None], lungs[cut][None]
    assert lungs[0, :, 0].any() and lungs[0, :, -1].any()
    outside = outside_air(air, tissue)
    assert not (outside & lungs).any()
    assert np.array_equal(outside, air & ~lungs)


def test_padding_is_neither_air_nor_tissue_and_a_circle_cut_keeps_the_lungs() -> None:
    """Voxels below PADDING_HU outside a reconstruction circle that cuts the lungs: the lungs stay inside."""
    tissue, air, lungs = chest_slice()
    j, i = np.ogrid[:120, :120]
    circle = (i - 59.5) ** 2 + (j - 63.5) ** 2 <= 40 ** 2  # cuts the lungs and holds air below the body
    hu = np.where(air, -1000, 40)
    hu = np.where(circle, hu, -3024)[None]
    assert (lungs & ~circle).any()  # the circle cuts the lungs
    measured_air = is_air(hu)
    assert not measured_air[0][~circle].any() and PADDING_HU > -3024
    outside = outside_air(measured_air, (hu >= -400))
    assert not (outside[0] & lungs).any() and (outside[0] & ~lungs & circle).any()


def test_air_under_a_table_that_spans_the_image_is_outside() -> None:
    """The body lies on a table plate cut by both image borders; the air below the plate is outside air."""
    tissue, air, lungs = chest_slice()
    plate = np.zeros_like(tissue)
    plate[101:105] = True  # just below the body's lowest row (101), from border to border
    tissue, air = (tissue | plate)[None], (air & ~plate)[None]
    outside = outside_air(air, tissue)
    assert outside[0, 106:].all() and not (outside[0] & lungs).any()


def test_envelope_of_a_u_shape() -> None:
    """Pixels between the arms of a U (along rows) are inside its envelope; pixels beyond its open end are not."""
    u = np.zeros((1, 20, 20), bool)
    u[0, 5:15, 4] = u[0, 5:15, 15] = u[0, 14, 4:16] = True
    envelope = slice_envelopes(u)
    assert envelope[0, 6:14, 5:15].all()
    assert not envelope[0, :4].any() and not envelope[0, 16:].any()
