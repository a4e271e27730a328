"""The lung-mask quality report (lungddpm.layout.lung_report): volumes, balance and warnings with their reasons."""

from __future__ import annotations

import numpy as np
import pytest

from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import Volume, index_to_physical
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.lung_report import lung_report
from lungddpm.layout.morphology import components


@pytest.fixture(scope="module")
def real_mask(real_ct: tuple[Volume, Volume]) -> tuple[Volume, Volume]:
    """The shared real CT and its automatic lung mask."""
    ct, _ = real_ct
    return ct, lung_mask(ct)


def test_real_ct_lungs_match_their_components(real_mask: tuple[Volume, Volume]) -> None:
    """Each lung's volume equals that of its own component (told apart by its LPS centroid), and no warning."""
    ct, mask = real_mask
    report = lung_report(ct, mask)
    labels, sizes = components(mask.array > 0)
    litres = {}
    for label in (1, 2):
        centroid = index_to_physical(ct, np.argwhere(labels == label).mean(axis=0)[::-1])
        litres["left" if centroid[0] > 0 else "right"] = sizes[label - 1] * np.prod(ct.spacing) / 1e6
    assert report.left_lung_l == pytest.approx(litres["left"], rel=0.03)
    assert report.right_lung_l == pytest.approx(litres["right"], rel=0.03)
    assert report.lung_volume_l == pytest.approx(np.count_nonzero(mask.array) * np.prod(ct.spacing) / 1e6)
    assert 0.4 < report.left_fraction < 0.5 and report.body_wall_fraction == 0.0 and report.warnings == []


def test_warnings_name_what_is_implausible(real_mask: tuple[Volume, Volume]) -> None:
    """One lung missing, a few slices under 1 L, and a mask that took in the air in front of the chest."""
    ct, mask = real_mask
    labels, _ = components(mask.array > 0)
    right_only = np.isin(labels, [n for n in (1, 2) if index_to_physical(
        ct, np.argwhere(labels == n).mean(axis=0)[::-1])[0] < 0])
    (warning,) = lung_report(ct, mask.with_array(right_only.astype(np.uint8))).warnings
    assert "left lung" in warning and "missing" in warning

    few = Volume.from_sitk(ct.to_sitk()[:, :, 28:32])
    (warning,) = lung_report(few, lung_mask(few)).warnings
    assert "under the 1 L" in warning and "first or last slice" in warning

    anterior_air = (ct.array < -900) & (np.arange(ct.array.shape[1]) < 140)[None, :, None]
    leaky = mask.with_array(((mask.array > 0) | anterior_air).astype(np.uint8))
    report = lung_report(ct, leaky)
    assert report.body_wall_fraction > 0.05
    assert any("outside the body" in text for text in report.warnings)


def test_phantom_lungs_match_the_truth() -> None:
    """A phantom's right and left lung volumes (LPS x < 0 is the right) from its exact layout."""
    phantom = make_phantom(phantom_grid((160, 128, 56), (2.2, 2.2, 5.0)), seed=3)
    k, j, i = np.indices(phantom.layout.array.shape)
    x = index_to_physical(phantom.layout, np.stack([i, j, k], axis=-1))[..., 0]
    truth = phantom.layout.array > 0
    voxel_l = np.prod(phantom.layout.spacing) / 1e6
    report = lung_report(phantom.ct, phantom.layout)
    assert report.right_lung_l == pytest.approx(np.count_nonzero(truth & (x < 0)) * voxel_l, rel=0.02)
    assert report.left_lung_l == pytest.approx(np.count_nonzero(truth & (x > 0)) * voxel_l, rel=0.02)
