"""A described nodule's outline is painted into the layout: spicules, ovoids and lobes as asked, measured in mm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungddpm.cli import main
from lungddpm.errors import InputError
from lungddpm.evaluation.adherence import shape_measures
from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.layout.nodule_shape import ELONGATION_AT_LINEAR, SPICULE_LENGTH_FRACTION, SPICULES_AT_MARKED
from lungddpm.layout.nodules import add_nodule, random_nodules
from lungddpm.layout.sidecar import read_sidecar

CENTRE = (1.3, -2.1, 0.6)  # mm, off the voxel grid


def lung(spacing: float = 1.0, size: int = 48) -> Volume:
    """An all-lung layout of size³ voxels centred on the origin, LPS axes."""
    return Volume(np.full((size,) * 3, LUNG, np.uint8), spacing=(spacing,) * 3,
                  origin=(-(size - 1) * spacing / 2,) * 3, direction=tuple(np.eye(3).ravel()))


def drawn(attributes: NoduleAttributes | None, diameter: float = 12.0, seed: int = 0, **kwargs) -> np.ndarray:
    """The nodule mask add-nodule paints for these attributes."""
    return add_nodule(lung(), CENTRE, diameter, seed=seed, attributes=attributes, **kwargs).array == NODULE


def offsets_mm(mask: np.ndarray) -> np.ndarray:
    """Each mask voxel's distance in mm from CENTRE (the lung() grid)."""
    grid = lung()
    points = np.argwhere(mask)[:, ::-1] * grid.spacing + grid.origin
    return np.linalg.norm(points - CENTRE, axis=1)


def test_unknown_or_plain_attributes_paint_the_same_ball_as_no_attributes():
    ball = drawn(None)
    assert np.array_equal(drawn(NoduleAttributes()), ball)
    assert np.array_equal(drawn(NoduleAttributes(texture=1, margin=2, calcification=3)), ball)  # not shapes
    assert np.array_equal(drawn(NoduleAttributes(spiculation=1, sphericity=5, lobulation=1)), ball)
    assert offsets_mm(ball).max() <= 6.0


def test_spiculation_adds_spicules_beyond_the_ball_and_raises_irregularity():
    ball = drawn(None)
    irregularity = {}
    for code in (1, 3, 5):
        masks = [drawn(NoduleAttributes(spiculation=code), seed=seed) for seed in range(3)]
        irregularity[code] = np.mean([shape_measures(m, (1.0,) * 3)["irregularity"] for m in masks])
        for mask in masks:
            assert np.all(mask[ball])  # spicules add to the ball, they take nothing away
            reach = offsets_mm(mask).max()
            if code > 1:
                assert 6.0 * (1 + 0.5 * SPICULE_LENGTH_FRACTION) < reach <= 6.0 * (1 + SPICULE_LENGTH_FRACTION) + 0.5
    assert irregularity[1] < 0.02 < irregularity[1] + 0.04 < irregularity[3] < irregularity[5] - 0.02
    spiculated = drawn(NoduleAttributes(spiculation=5))
    beyond = spiculated & ~ball
    assert beyond.sum() > SPICULES_AT_MARKED * 5  # about a dozen spicules, several voxels each


def test_sphericity_draws_an_ovoid_of_the_same_volume():
    round_, linear = drawn(NoduleAttributes(sphericity=5)), drawn(NoduleAttributes(sphericity=1))
    assert linear.sum() == pytest.approx(round_.sum(), rel=0.05)
    assert shape_measures(linear, (1.0,) * 3)["elongation"] == pytest.approx(ELONGATION_AT_LINEAR, rel=0.08)
    assert shape_measures(round_, (1.0,) * 3)["elongation"] == pytest.approx(1.0, abs=0.05)


def test_lobulation_is_the_irregularity_and_not_both():
    assert np.array_equal(drawn(NoduleAttributes(lobulation=5)), drawn(None, irregularity=1.0))
    assert np.array_equal(drawn(NoduleAttributes(lobulation=3)), drawn(None, irregularity=0.5))
    with pytest.raises(InputError, match="irregularity 0.3 and lobulation 4 both set the nodule's lobes"):
        drawn(NoduleAttributes(lobulation=4), irregularity=0.3)


def test_random_nodules_follow_their_own_attributes_and_keep_their_places_without_them():
    layout = lung(size=64)
    plain, plain_specs = random_nodules(layout, 2, (10.0, 12.0), seed=5)
    same, same_specs = random_nodules(layout, 2, (10.0, 12.0), seed=5, attributes=[None, NoduleAttributes(texture=1)])
    assert np.array_equal(plain.array, same.array) and plain_specs == same_specs
    described, specs = random_nodules(layout, 2, (10.0, 12.0), seed=5,
                                      attributes=[NoduleAttributes(spiculation=5), NoduleAttributes(sphericity=1)])
    from lungddpm.layout.sidecar import nodule_components

    components, count = nodule_components(described)
    assert count == 2
    measured = []
    for spec in specs:  # each spec's own nodule: the component at its centre
        index = np.rint((np.asarray(spec["center_lps_mm"]) - layout.origin) / layout.spacing).astype(int)[::-1]
        measured.append(shape_measures(components == components[tuple(index)], layout.spacing))
    assert measured[0]["irregularity"] > 0.04 and measured[1]["elongation"] > 2.0
    with pytest.raises(InputError, match="1 nodule attribute records for 2 random nodules"):
        random_nodules(layout, 2, (10.0, 12.0), seed=5, attributes=[None])


@pytest.fixture()
def layout_file(tmp_path):
    """An all-lung layout file."""
    return write_volume(lung(spacing=1.5, size=40), tmp_path / "layout.nrrd")


def test_add_nodule_cli_paints_the_prompt_s_outline_and_records_every_attribute(layout_file, tmp_path, capsys):
    args = ["add-nodule", "--layout", str(layout_file), "--center", *map(str, CENTRE)]
    assert main([*args, "--output", str(tmp_path / "plain.nrrd"), "--diameter", "12"]) == 0
    assert main([*args, "--output", str(tmp_path / "spic.nrrd"), "--prompt", "12 mm part-solid spiculated nodule"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["nodules"][0]["diameter_mm"] == 12.0 and "kind" not in printed["nodules"][0]
    assert printed["nodules"][0]["attributes"] == {"texture": 3, "spiculation": 5}
    plain, spiculated = (read_volume(tmp_path / name).array == NODULE for name in ("plain.nrrd", "spic.nrrd"))
    assert np.all(spiculated[plain]) and spiculated.sum() > plain.sum() + 20
    (record,) = read_sidecar(tmp_path / "spic.nrrd")
    assert (record.attributes.texture, record.attributes.spiculation) == (3, 5)
    assert main([*args, "--output", str(tmp_path / "n.nrrd"), "--diameter", "12", "--nodule", "spiculation=5, texture=part-solid"]) == 0
    assert np.array_equal(read_volume(tmp_path / "n.nrrd").array, read_volume(tmp_path / "spic.nrrd").array)


@pytest.mark.parametrize("extra, message", [
    (["--diameter", "10", "--prompt", "12 mm solid"], "--diameter 10 and the 12 mm in --nodule/--prompt differ"),
    (["--kinds", "solid", "--nodule", "texture=1", "--diameter", "10"], "--kinds solid and the texture in --nodule"),
    (["--prompt", "spiculated"], "needs --center X Y Z and --diameter MM (or a size in --prompt)"),
    (["--irregularity", "0.2", "--nodule", "lobulation=2", "--diameter", "9"], "irregularity 0.2 and lobulation 2"),
    (["--nodule", "texture=glassy", "--diameter", "9"], "texture"),
])
def test_add_nodule_cli_refuses_conflicting_descriptions(layout_file, tmp_path, capsys, extra, message):
    code = main(["add-nodule", "--layout", str(layout_file), "--output", str(tmp_path / "x.nrrd"),
                 "--center", *map(str, CENTRE), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.nrrd").exists()


def test_add_nodule_cli_random_nodules_take_the_description_but_not_a_size(layout_file, tmp_path, capsys):
    args = ["add-nodule", "--layout", str(layout_file), "--random", "2", "--diameter-range", "8", "9"]
    assert main([*args, "--output", str(tmp_path / "r.nrrd"), "--nodule", "spiculation=5"]) == 0
    records = read_sidecar(tmp_path / "r.nrrd")
    assert len(records) == 2 and all(r.attributes.spiculation == 5 and r.attributes.texture == 5 for r in records)
    assert main([*args, "--output", str(tmp_path / "s.nrrd"), "--prompt", "12 mm solid"]) == 2
    assert "a diameter in --nodule/--prompt is for one nodule at a point" in capsys.readouterr().err


def ball_lung(radius_mm: float, spacing: float = 0.5) -> Volume:
    """A layout whose lung is a ball of the radius about the origin (0.5-mm voxels)."""
    size = int(2 * radius_mm / spacing) + 9
    grid = Volume(np.zeros((size,) * 3, np.uint8), spacing=(spacing,) * 3, origin=(-(size - 1) * spacing / 2,) * 3)
    k, j, i = np.indices(grid.array.shape)
    points = np.stack([i, j, k], axis=-1) * spacing + grid.origin
    return grid.with_array(np.where(np.linalg.norm(points, axis=-1) <= radius_mm, LUNG, 0).astype(np.uint8))


def test_nodule_kinds_are_the_schema_s_textures():
    from lungddpm.layout.attributes import parse_assignments
    from lungddpm.layout.nodules import KIND_TEXTURE, NODULE_KINDS

    assert {kind: KIND_TEXTURE[kind] for kind in NODULE_KINDS} == \
        {kind: parse_assignments(f"texture={kind}").texture for kind in NODULE_KINDS}


def test_nodule_mask_is_a_ball_unless_told_otherwise():
    from lungddpm.layout.nodules import nodule_mask

    grid = lung()
    assert np.array_equal(nodule_mask(grid, CENTRE, 12.0), nodule_mask(grid, CENTRE, 12.0, irregularity=0.0, seed=0))
    assert np.array_equal(nodule_mask(grid, CENTRE, 12.0), offsets_mm_grid(grid) <= 6.0)


def offsets_mm_grid(grid: Volume) -> np.ndarray:
    """Each voxel's distance in mm from CENTRE."""
    k, j, i = np.indices(grid.array.shape)
    return np.linalg.norm(np.stack([i, j, k], axis=-1) * grid.spacing + grid.origin - CENTRE, axis=-1)


def test_random_nodules_come_as_close_to_the_lung_border_and_to_each_other_as_their_radii_allow():
    one, _ = random_nodules(ball_lung(10.0), 1, (18.0, 18.0), seed=0, irregularity=0.0)  # 9-mm radius in a 10-mm lung
    assert (one.array == NODULE).sum() > 0
    for seed in range(6):
        layout, specs = random_nodules(ball_lung(14.0), 2, (8.0, 8.0), seed=seed, irregularity=0.0)
        from lungddpm.layout.sidecar import nodule_components

        assert nodule_components(layout)[1] == 2  # never touching: centres more than 8 mm apart
        assert np.linalg.norm(np.subtract(specs[0]["center_lps_mm"], specs[1]["center_lps_mm"])) > 8.0
    with pytest.raises(InputError, match="no room left in the lung for nodule 2 of 2 \\(8.0 mm\\)"):
        random_nodules(ball_lung(9.0), 2, (8.0, 8.0), seed=0)
    with pytest.raises(InputError, match="the layout has no free lung voxels \\(label 1\\) to place nodules in"):
        random_nodules(lung().with_array(np.zeros((48,) * 3, np.uint8)), 1, seed=0)
