"""Nodule measurements against closed forms and phantom nodules of known characteristics; Spearman's ρ; agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import rotation
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.layout.nodule_shape import ELONGATION_AT_LINEAR
from lungddpm.evaluation.adherence import agreement, nodule_measurements, ranks, spearman
from lungddpm.io.volume import Volume, index_to_physical
from lungddpm.layout.labels import LUNG, NODULE

LUNG_HU, NODULE_HU = -850.0, 40.0
TILTED = tuple(rotation((1.0, 2.0, 0.5), 0.7).ravel())  # an oblique grid: measures must not depend on orientation


def _grid(shape_ijk=(48, 44, 36), spacing=(0.7, 0.8, 1.1), direction=TILTED) -> tuple[Volume, np.ndarray]:
    """An empty grid centred at (0, 0, 0) mm and the LPS position (k, j, i, 3) of every voxel."""
    grid = phantom_grid(size=shape_ijk, spacing=spacing, direction=direction)
    k, j, i = np.indices(grid.array.shape)
    return grid, index_to_physical(grid, np.stack([i, j, k], axis=-1))


def _case(grid: Volume, hu: np.ndarray, nodule: np.ndarray) -> tuple[Volume, Volume]:
    """CT and layout (lung everywhere, the nodule label where asked) on the grid."""
    layout = np.where(nodule, NODULE, LUNG).astype(np.uint8)
    return grid.with_array(hu.astype(np.float32)), grid.with_array(layout)


def test_a_sphere_on_an_oblique_anisotropic_grid_has_its_diameter_and_is_round():
    grid, xyz = _grid()
    ball = np.linalg.norm(xyz - (1.0, -2.0, 0.5), axis=-1) <= 6.0  # 12 mm across
    for inside, calcified in ((NODULE_HU, 0.0), (400.0, 1.0)):
        [m] = nodule_measurements(*_case(grid, np.where(ball, inside, LUNG_HU), ball))
        assert m["layout_diameter_mm"] == pytest.approx(12.0, rel=0.02) and m["diameter_mm"] == pytest.approx(12.0, rel=0.02)
        assert m["mean_hu"] == pytest.approx(inside) and m["solid_fraction"] == 1.0
        assert m["calcified_fraction"] == calcified
        assert m["elongation"] == pytest.approx(1.0, abs=0.05) and abs(m["irregularity"]) < 0.05
        assert m["center_lps_mm"] == pytest.approx([1.0, -2.0, 0.5], abs=0.3)


def test_an_ellipsoid_gives_its_axis_ratio():
    grid, xyz = _grid()
    axes = rotation((0.3, -1.0, 0.2), 1.1)  # the ellipsoid's own axes, not the grid's
    local = xyz @ axes  # coordinates along the ellipsoid's axes
    inside = (local[..., 0] / 10.0) ** 2 + (local[..., 1] / 6.0) ** 2 + (local[..., 2] / 5.0) ** 2 <= 1
    [m] = nodule_measurements(*_case(grid, np.where(inside, NODULE_HU, LUNG_HU), inside))
    assert m["elongation"] == pytest.approx(10.0 / 5.0, rel=0.04)  # a / c: covariance eigenvalues a²/5, c²/5
    assert m["diameter_mm"] == pytest.approx(2 * (10 * 6 * 5) ** (1 / 3), rel=0.03)


def test_a_ramp_edge_gives_its_slope_and_a_step_is_sharper():
    grid, xyz = _grid(spacing=(0.6, 0.6, 0.9))
    r = np.linalg.norm(xyz, axis=-1)
    ball = r <= 7.0
    width = 6.0  # mm: HU rises linearly from the lung to the nodule over r in [7 − 3, 7 + 3]
    ramp = LUNG_HU + (NODULE_HU - LUNG_HU) * np.clip((7.0 + width / 2 - r) / width, 0, 1)
    [m] = nodule_measurements(*_case(grid, ramp, ball))
    assert m["edge_sharpness_hu_per_mm"] == pytest.approx((NODULE_HU - LUNG_HU) / width, rel=0.05)
    [step] = nodule_measurements(*_case(grid, np.where(ball, NODULE_HU, LUNG_HU), ball))
    assert step["edge_sharpness_hu_per_mm"] > 2 * m["edge_sharpness_hu_per_mm"]


@pytest.fixture(scope="module")
def phantom_nodules():
    """Measurements of phantom nodules (16 mm, 1 mm voxels, in the right lung) that differ in one characteristic each."""
    grid = phantom_grid(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0))
    where = dict(body_center_lps_mm=(80.0, -10.0, -30.0), seed=1)  # the grid's centre lies in the right lung
    reference = make_phantom(grid, **where).ct  # the same anatomy without the nodule (its own seed stream)
    looks = {"plain": {}, "spiculated": {"spiculation": 5}, "lobulated": {"lobulation": 5}, "ground-glass": {"texture": 1},
             "part-solid": {"texture": 3}, "blurred": {"margin": 1}, "linear": {"sphericity": 1}, "ovoid": {"sphericity": 3},
             **{f"calcification {c}": {"calcification": c} for c in (1, 2, 3, 4, 5)}}
    measured = {}
    for name, attributes in looks.items():
        ph = make_phantom(grid, **where, nodules=[{"center_lps_mm": (0, 0, 0), "diameter_mm": 16.0,
                                                   "attributes": attributes}])
        measured[name] = max(nodule_measurements(ph.ct, ph.layout, reference), key=lambda m: m["layout_diameter_mm"])
    return measured


def test_phantom_nodules_measure_as_drawn(phantom_nodules):
    m = phantom_nodules
    assert m["ground-glass"]["mean_hu"] < m["part-solid"]["mean_hu"] < m["plain"]["mean_hu"]  # texture 1 < 3 < 5
    assert m["ground-glass"]["solid_fraction"] < m["part-solid"]["solid_fraction"] < m["plain"]["solid_fraction"] == 1
    assert m["spiculated"]["irregularity"] > m["plain"]["irregularity"] + 0.05
    assert m["lobulated"]["irregularity"] > m["plain"]["irregularity"] + 0.03
    assert m["blurred"]["edge_sharpness_hu_per_mm"] < 0.8 * m["plain"]["edge_sharpness_hu_per_mm"]
    assert m["linear"]["elongation"] == pytest.approx(ELONGATION_AT_LINEAR, rel=0.05)  # the phantom's long/short axis
    assert m["ovoid"]["elongation"] == pytest.approx(1 + (ELONGATION_AT_LINEAR - 1) / 2, rel=0.05)
    assert m["plain"]["elongation"] == pytest.approx(1.0, abs=0.05) and m["plain"]["diameter_mm"] == pytest.approx(16, rel=0.03)
    assert m["plain"]["calcified_fraction"] == 0
    assert all(m[f"calcification {c}"]["calcified_fraction"] >= 0.02 for c in (1, 2, 3, 4, 5))


def test_spearman_matches_closed_forms():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 3, 2, -1]) == pytest.approx(-1.0)
    assert list(ranks([3, 1, 1, 2])) == [4.0, 1.5, 1.5, 3.0]
    # ties: ranks x (1.5, 1.5, 3, 4), y (1, 2, 3, 4): sum dx·dy = 4.5, sum dx² = 4.5, sum dy² = 5
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))


def test_agreement_scores_ordinal_attributes_and_counts_calcification():
    rows = [{"requested": {"texture": t, "calcification": c, "diameter_mm": 10.0}, "mean_hu": hu, "solid_fraction": sf,
             "calcified_fraction": cf, "edge_sharpness_hu_per_mm": 1.0, "irregularity": 0.1, "elongation": 1.0,
             "diameter_mm": d}
            for t, c, hu, sf, cf, d in ((1, 6, -600, 0.0, 0.0, math.nan), (3, 6, -300, 0.5, 0.0, 11.0),
                                        (5, 3, 30, 1.0, 0.5, 8.0), (5, 6, 20, 1.0, 0.3, 13.0))]
    result = agreement(rows + [{"requested": None}])
    texture = result["texture"]["mean_hu"]
    assert texture["n"] == 4 and texture["spearman_rho"] == pytest.approx(spearman([1, 3, 5, 5], [-600, -300, 30, 20]))
    assert texture["mean_by_requested"] == {"1": {"mean": -600, "n": 1}, "3": {"mean": -300, "n": 1},
                                            "5": {"mean": 25, "n": 2}}
    assert set(result) == {"texture", "calcification", "diameter_mm"}  # only what was requested and measured
    diameter = result["diameter_mm"]["diameter_mm"]  # a ground-glass nodule (NaN: no dense region) is left out
    assert diameter["n"] == 3 and diameter["mean_abs_error_mm"] == pytest.approx((1 + 2 + 3) / 3)
    confusion = result["calcification"]["confusion"]
    assert confusion["requested calcified"] == {"measured calcified": 1, "measured not calcified": 0}
    assert confusion["requested not calcified"] == {"measured calcified": 1, "measured not calcified": 2}
    assert result["calcification"]["accuracy"] == 0.75


def test_evaluate_reports_each_nodule_with_its_request_the_agreement_and_the_variety(tmp_path):
    import nibabel as nib

    from helpers import random_model
    from lungddpm import save_checkpoint
    from lungddpm.evaluation.backbones import random_backbone
    from lungddpm.evaluation.evaluate import evaluate_dataset
    from lungddpm.generation.attribute_source import parse_attribute_source
    from lungddpm.generation.export import dataset_folder
    from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
    from lungddpm.generation.shards import Shard
    from lungddpm.io.volume import write_volume

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    net = random_model(attributes=("texture", "spiculation"), in_channels=2, profile="released-patch")
    model = save_checkpoint(tmp_path / "attr.pt", net)
    (tmp_path / "refs").mkdir()
    write_volume(make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=0).ct,
                 tmp_path / "refs" / "chest0.nii.gz")
    paths = dataset_folder(tmp_path / "out", 501, "Attr")
    settings = GenerateSettings(variants=2, sampler="dpmpp2m", steps=2, device="cpu", guidance=3.0,
                                nodules=NoduleRequest(1, (20.0, 25.0)),
                                attributes_from=parse_attribute_source("texture=ground-glass:0.5,solid:0.5"))
    generate(read_references(tmp_path / "refs"), model, paths, settings, Shard(0, 1), progress="none")
    report = evaluate_dataset(paths, tmp_path / "report", *random_backbone(10, "B", 0), feature_size=16, previews=0)
    nodules = report["nodules"]["cases"]
    assert [n["case"] for n in nodules] == ["LUNGSYN_chest0_v000", "LUNGSYN_chest0_v001"]
    arrays = {}
    for n in nodules:
        provenance = json.loads(paths.provenance(n["case"]).read_text())
        assert n["guidance"] == 3.0 and n["requested"] == provenance["nodule_attributes"][0]["attributes"]
        image = nib.load(paths.image(n["case"])).get_fdata()  # an independent reader
        labels = np.asarray(nib.load(paths.label(n["case"])).dataobj)
        assert n["mean_hu"] == pytest.approx(image[labels == NODULE].mean(), abs=1e-3)
        arrays[n["case"]] = image, labels
    (a, la), (b, lb) = arrays.values()
    both = (la >= LUNG) & (lb >= LUNG)
    assert report["variety"]["by_guidance"] == {"w=3": {"mean_abs_diff_hu": pytest.approx(np.abs(a - b)[both].mean()),
                                                       "references": 1}}
    assert report["nodules"]["agreement"]["w=3"]["texture"]["mean_hu"]["n"] == 2
    page = (tmp_path / "report" / "report.md").read_text()
    assert "### Agreement (requested vs measured)" in page and "## Variety among the variants" in page
