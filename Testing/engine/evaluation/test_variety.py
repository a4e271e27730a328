"""Variety among variants: the mean pairwise |ΔHU| inside both layouts' lung, grouped per reference and key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungddpm.evaluation.variety import VarietyGroups, mean_pairwise_difference


def test_mean_pairwise_difference_is_the_mean_over_pairs_inside_both_lungs():
    lung = np.ones((4, 4, 4), dtype=np.uint8)
    lung[0] = 0  # outside the lung the images differ wildly: not counted
    images = [np.where(lung, v, 1000 * n).astype(np.int16) for n, v in enumerate((0, 10, 30))]
    assert mean_pairwise_difference(images, [lung] * 3) == pytest.approx((10 + 30 + 20) / 3)
    smaller = lung.copy()
    smaller[1] = 0
    images[2][1] = 500  # only where the third layout has no lung
    assert mean_pairwise_difference(images, [lung, lung, smaller]) == pytest.approx((10 + 30 + 20) / 3)
    assert math.isnan(mean_pairwise_difference(images[:1], [lung]))


def test_groups_close_when_the_reference_changes_and_single_variants_are_left_out():
    lung = np.ones((2, 2, 2), dtype=np.uint8)
    groups = VarietyGroups()
    for reference, key, value in (("a", 1.0, 0), ("a", 1.0, 4), ("a", 3.0, 0), ("b", 1.0, 2), ("b", 1.0, 3)):
        groups.add(reference, key, np.full((2, 2, 2), value), lung)
    assert groups.finish() == [{"reference_id": "a", "key": 1.0, "variants": 2, "mean_abs_diff_hu": 4.0},
                               {"reference_id": "b", "key": 1.0, "variants": 2, "mean_abs_diff_hu": 1.0}]
