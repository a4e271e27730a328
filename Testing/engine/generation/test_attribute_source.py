"""`generate --attributes-from`: mixes and prepared manifests as distributions, seeded draws, provenance, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungddpm.cli import main
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.errors import ConfigError, InputError
from lungddpm.generation.attribute_source import parse_attribute_source
from lungddpm.generation.export import dataset_folder
from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
from lungddpm.generation.shards import Shard
from lungddpm.io.volume import read_volume
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.nodules import KIND_TEXTURE
from lungddpm.layout.sidecar import NoduleRecord, equivalent_diameter_mm, match_records, nodule_components

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(sampler="dpmpp2m", steps=2, device="cpu")


def test_a_mix_is_drawn_with_its_weights_and_the_same_seed_gives_the_same_draws():
    source = parse_attribute_source("texture=ground-glass:0.3, part-solid:0.3, 5:0.4; Spiculation=1,5")
    assert source.fields == ("texture", "spiculation")
    draws = source.draw(seed=11, count=4000)
    textures = np.array([d.texture for d in draws])
    for code, p in ((1, 0.3), (3, 0.3), (5, 0.4)):  # binomial: 5 standard deviations
        assert abs((textures == code).mean() - p) < 5 * np.sqrt(p * (1 - p) / len(draws)), code
    assert abs(np.mean([d.spiculation == 5 for d in draws]) - 0.5) < 5 * np.sqrt(0.25 / len(draws))  # equal weights
    assert all(d.margin is None and d.diameter_mm is None for d in draws)  # unnamed characteristics stay unknown
    assert source.draw(11, 50) == draws[:50]  # deterministic per seed, and a prefix of a longer draw
    assert source.draw(12, 50) != draws[:50]
    assert parse_attribute_source("texture=1:3,5:1").as_dict()["mix"] == {"texture": {"1": 0.75, "5": 0.25}}


@pytest.mark.parametrize("text, message", [
    ("texture=glassy", "--attributes-from texture='glassy' is not a value of texture; use 1 ground-glass"),
    ("texture=solid:0", "a weight must be a positive number"),
    ("texture=solid:x", "a weight must be a positive number"),
    ("texture=solid; texture=1", "gives texture twice"),
    ("texture=solid,5", "lists '5' twice"),
    ("diameter=12", "the layout sets the diameter"),
    ("colour=red", "must be name=value"),
    ("calcification=2.5", "is a category"),
    ("texture=", "lists no values"),
    ("no/such/manifest.json", "no such manifest.json or prepared folder"),
])
def test_bad_sources_are_one_line_naming_the_fix(text, message):
    with pytest.raises(InputError, match=None) as raised:
        parse_attribute_source(text)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def _manifest(folder: Path) -> Path:
    """A prepared manifest (the keys `lungddpm prepare` writes): a patch set listing one nodule in two cubes."""
    texture3 = {"component": 1, "center_lps_mm": [0, 0, 0], "attributes": {"texture": 3, "spiculation": 4.5,
                                                                           "diameter_mm": 9.0, "readers": 4}}
    solid = {"component": 2, "center_lps_mm": [9, 9, 9], "attributes": {"texture": 5, "diameter_mm": 7.0, "readers": 2}}
    unrated = {"component": 1, "center_lps_mm": [1, 1, 1], "attributes": {"diameter_mm": 3.0}}
    cases = [{"case_id": "A", "cube": 0, "nodules": [texture3]}, {"case_id": "A", "cube": 1, "nodules": [texture3, solid]},
             {"case_id": "B", "nodules": [unrated]}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"space": "x", "cases": cases}))
    return folder / "manifest.json"


def test_a_manifest_gives_its_rated_nodules_once_each_without_their_size(tmp_path):
    path = _manifest(tmp_path / "prepared")
    source = parse_attribute_source(str(tmp_path / "prepared"))  # the folder finds its manifest.json
    assert set(source.records) == {NoduleAttributes(texture=3, spiculation=4.5), NoduleAttributes(texture=5)}
    assert len(source.records) == 2 and source.fields == ("spiculation", "texture")
    draws = source.draw(seed=3, count=2000)
    assert abs(np.mean([d.texture == 3 for d in draws]) - 0.5) < 5 * np.sqrt(0.25 / 2000)  # uniform over nodules
    assert source.as_dict() == {"source": str(tmp_path / "prepared"), "manifest": str(path.resolve()), "records": 2}
    (tmp_path / "bad.json").write_text(json.dumps({"cases": [{"nodules": [{}]}]}))
    with pytest.raises(InputError, match="not a `lungddpm prepare` manifest"):
        parse_attribute_source(str(tmp_path / "bad.json"))
    (tmp_path / "unrated").mkdir()
    (tmp_path / "unrated" / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "B", "nodules": [
        {"component": 1, "attributes": {"diameter_mm": 4.0}}]}]}))
    with pytest.raises(InputError, match="none of its 1 nodule"):
        parse_attribute_source(str(tmp_path / "unrated"))


@pytest.fixture(scope="module")
def refs_dir(tmp_path_factory) -> Path:
    """One small phantom CT (80 x 80 x 48 voxels of 4.5 x 4.5 x 5 mm) in a folder, without a layout."""
    from lungddpm.demo.phantom import make_phantom, phantom_grid
    from lungddpm.io.volume import write_volume

    folder = tmp_path_factory.mktemp("refs")
    write_volume(make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=0).ct, folder / "chest0.nii.gz")
    return folder


@pytest.fixture(scope="module")
def attribute_model(tmp_path_factory) -> Path:
    """A small patch model that knows texture and spiculation, with a texture effect of many HU."""
    from helpers import random_model
    from lungddpm import save_checkpoint

    net = random_model(attributes=("texture", "spiculation"), in_channels=2, profile="released-patch")
    net.denoise_fn.attribute_embed.tables[0].weight.data.normal_(0.0, 1.0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "attr.pt", net)


def _case(paths) -> tuple[dict, np.ndarray]:
    """The only case's provenance record and synthetic image."""
    record = json.loads(next((paths.root / "provenance").glob("*.json")).read_text())
    return record, nib.load(next((paths.root / "imagesTr").glob("*.nii.gz"))).get_fdata()


def test_generate_draws_each_nodule_and_records_it_as_kinds_and_add_nodule_do(refs_dir, attribute_model, tmp_path):
    refs = read_references(refs_dir)[:1]
    made = {}
    for name, nodules, source in (("kinds", NoduleRequest(2, (18.0, 22.0), ("ground-glass",)), None),
                                  ("mix", NoduleRequest(2, (18.0, 22.0)), "texture=ground-glass")):
        paths = dataset_folder(tmp_path / name, 501, "Attr")
        settings = GenerateSettings(nodules=nodules, guidance=2.0, **FAST,
                                    attributes_from=parse_attribute_source(source) if source else None)
        generate(refs, attribute_model, paths, settings, Shard(0, 1), progress="none")
        made[name] = record, image = _case(paths)
        layout = read_volume(paths.root / record["label"])
        components, count = nodule_components(layout)
        requested = [NoduleRecord(r["component"], tuple(r["center_lps_mm"]), NoduleAttributes.from_dict(r["attributes"]))
                     for r in record["nodule_attributes"]]
        assert count == 2 and [r.component for r in requested] == [1, 2]
        assert sorted(match_records(layout, requested)) == [1, 2]  # each record's centre lies in its own nodule
        for r in requested:  # the texture asked for, and the diameter of the nodule written to disk
            voxels = int((components == r.component).sum())
            assert r.attributes == NoduleAttributes(texture=KIND_TEXTURE["ground-glass"],
                                                    diameter_mm=equivalent_diameter_mm(voxels, layout.spacing))
        assert record["guidance"] == 2.0 and record["attribute_schema"] == "texture,spiculation"
        manifest = [json.loads(line) for line in (paths.root / "manifest.jsonl").read_text().splitlines()]
        assert manifest[0]["nodule_attributes"] == record["nodule_attributes"]
    assert made["mix"][0]["attributes_from"] == {"source": "texture=ground-glass", "mix": {"texture": {"1": 1.0}}}
    assert made["kinds"][0]["nodule_attributes"] == made["mix"][0]["nodule_attributes"]
    assert np.array_equal(made["kinds"][1], made["mix"][1])  # the same request gives the same image, bit for bit
    other = GenerateSettings(nodules=NoduleRequest(2, (18.0, 22.0)), guidance=2.0, **FAST,
                             attributes_from=parse_attribute_source("texture=solid"))
    with pytest.raises(ConfigError, match="made with other settings \\(attributes_from"):
        generate(refs, attribute_model, dataset_folder(tmp_path / "mix", 501, "Attr"), other, Shard(0, 1), progress="none")


def test_generate_from_a_manifest_asks_each_nodule_its_drawn_record(refs_dir, attribute_model, tmp_path):
    source = parse_attribute_source(str(_manifest(tmp_path / "prepared")))
    paths = dataset_folder(tmp_path / "out", 501, "Attr")
    settings = GenerateSettings(nodules=NoduleRequest(2, (18.0, 22.0)), seed=4, attributes_from=source, **FAST)
    generate(read_references(refs_dir)[:1], attribute_model, paths, settings, Shard(0, 1), progress="none")
    record, _ = _case(paths)
    drawn = source.draw(record["seed"], 2)  # the reference has no nodules: the draws go to the random ones in order
    assert [spec["attributes"] for spec in record["nodules"]] == [d.to_dict() for d in drawn]
    layout = read_volume(paths.root / record["label"])
    asked = match_records(layout, [NoduleRecord(r["component"], tuple(r["center_lps_mm"]),
                                                NoduleAttributes.from_dict(r["attributes"]))
                                   for r in record["nodule_attributes"]])
    placed = match_records(layout, [NoduleRecord(0, tuple(spec["center_lps_mm"]), d) for spec, d in
                                    zip(record["nodules"], drawn)])
    assert {label: a.to_dict() for label, a in placed.items()} == \
        {label: {k: v for k, v in a.to_dict().items() if k != "diameter_mm"} for label, a in asked.items()}
    assert record["attributes_from"]["records"] == 2


def test_generate_paints_the_drawn_spiculation_into_the_labels(refs_dir, attribute_model, tmp_path):
    from lungddpm.layout.nodules import random_nodules

    nodules = {}
    for code in (1, 5):
        paths = dataset_folder(tmp_path / str(code), 501, "Attr")
        settings = GenerateSettings(nodules=NoduleRequest(2, (18.0, 22.0)), attributes_from=parse_attribute_source(
            f"spiculation={code}"), **FAST)
        generate(read_references(refs_dir)[:1], attribute_model, paths, settings, Shard(0, 1), progress="none")
        record, _ = _case(paths)
        labels = read_volume(paths.root / record["label"])
        assert all(spec["attributes"] == {"spiculation": code} for spec in record["nodules"])
        lungs = labels.with_array(np.minimum(labels.array, 1).astype(np.uint8))  # the case's lung mask, before nodules
        expected, _ = random_nodules(lungs, 2, (18.0, 22.0), seed=record["seed"],
                                     attributes=[NoduleAttributes(spiculation=code)] * 2)
        assert np.array_equal(labels.array, expected.array)  # the outline the draw asks for, in the labels
        nodules[code] = labels.array == 2
    assert nodules[5].sum() > nodules[1].sum()  # spicules (few voxels on this 4.5 x 4.5 x 5 mm grid)


def test_a_reference_layout_s_own_nodules_are_drawn_too(attribute_model, tmp_path):
    from lungddpm.demo.phantom import make_phantom, phantom_grid
    from lungddpm.io.volume import write_volume

    phantom = make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=2, nodules=2)
    write_volume(phantom.ct, tmp_path / "ct.nii.gz")
    write_volume(phantom.layout, tmp_path / "layout.nii.gz")
    (tmp_path / "refs.csv").write_text("id,image,layout\nP2,ct.nii.gz,layout.nii.gz\n")
    paths = dataset_folder(tmp_path / "out", 501, "Attr")
    settings = GenerateSettings(attributes_from=parse_attribute_source("texture=part-solid"), **FAST)  # no --nodules
    generate(read_references(tmp_path / "refs.csv"), attribute_model, paths, settings, Shard(0, 1), progress="none")
    record, _ = _case(paths)
    assert record["layout_source"] == "file" and len(record["nodule_attributes"]) == 2
    assert all(r["attributes"]["texture"] == 3 for r in record["nodule_attributes"])


def test_attributes_from_is_refused_for_a_model_without_attributes_and_with_kinds(refs_dir, attribute_model, tmp_path,
                                                                                 capsys):
    args = ["generate", "--references", str(refs_dir), "--output", str(tmp_path / "o"), "--nodules", "1", "--steps",
            "2", "--device", "cpu", "--progress", "none"]
    assert main([*args, "--model", "demo", "--attributes-from", "texture=solid:0.5,ground-glass:0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungddpm: error: model ") and "takes no nodule attributes, so --attributes-from" in err
    assert "\n" not in err and not any(tmp_path.rglob("*.nii.gz"))  # refused before any case
    assert main([*args, "--model", str(attribute_model), "--attributes-from", "margin=1"]) == 2
    assert "knows the attributes texture, spiculation; leave margin out of --attributes-from" in capsys.readouterr().err
    settings = GenerateSettings(nodules=NoduleRequest(1, kinds=("solid", "ground-glass")),
                                attributes_from=parse_attribute_source("texture=1"), **FAST)
    with pytest.raises(ConfigError, match="--kinds solid ground-glass and --attributes-from both"):
        generate(read_references(refs_dir), attribute_model, dataset_folder(tmp_path / "k", 501, "A"), settings,
                 Shard(0, 1), progress="none")
    with pytest.raises(ConfigError, match="so --guidance has nothing to guide"):
        generate(read_references(refs_dir), DEMO_MODEL, dataset_folder(tmp_path / "g", 501, "A"),
                 GenerateSettings(nodules=NoduleRequest(1), guidance=3.0, **FAST), Shard(0, 1), progress="none")
