"""`lungddpm generate`: sharding, resume, atomic cases, nnU-Net v2 / MONAI / manifest output."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lungddpm.demo.demo import DEMO_MODEL, DEMO_NODULES_MODEL
from lungddpm.generation.export import dataset_folder, finalize
from lungddpm.errors import ConfigError
from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
from lungddpm.generation.shards import Shard, parse_shard, shard_from_env, shard_items, variant_seed, work_items
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.cli import main
from lungddpm.io.atomic import is_temporary
from lungddpm.io.volume import read_volume, same_grid, write_volume
from lungddpm.model.fastpath import pick_fast_path

REPO = Path(__file__).resolve().parents[3]
FAST = dict(sampler="dpmpp2m", steps=2, device="cpu")
NODULES = NoduleRequest(1, (20.0, 25.0))  # the demo model sees ~10 mm voxels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def refs_dir(tmp_path_factory) -> Path:
    """Two small phantom CTs (80 x 80 x 48 voxels of 4.5 x 4.5 x 5 mm) in a folder, without layouts."""
    folder = tmp_path_factory.mktemp("refs")
    for n in range(2):
        phantom = make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=n)
        write_volume(phantom.ct, folder / f"chest{n}.nii.gz")
    return folder


def test_shards_cover_every_case_exactly_once():
    items = work_items([f"r{n}" for n in range(5)], 3, base_seed=7)
    assert len(items) == 15 and len({i.case for i in items}) == 15
    for world in (1, 2, 3, 4, 16):
        shards = [shard_items(items, Shard(rank, world)) for rank in range(world)]
        cases = [i.case for s in shards for i in s]
        assert sorted(cases) == sorted(i.case for i in items), world  # no gaps, no duplicates
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    # a case's seed depends on its reference and variant only, not on which other references are listed
    assert work_items(["r3"], 3, base_seed=7) == [i for i in items if i.reference_id == "r3"]
    assert variant_seed(7, "r3", 1) != variant_seed(7, "r3", 2) != variant_seed(8, "r3", 2)


def test_rank_comes_from_torchrun_variables_or_shard_option():
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    assert shard_from_env({}) == Shard(0, 1, 0)
    assert parse_shard("1/2") == Shard(1, 2)
    for bad in ("2/2", "1-2", "x/2"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="distinct id"):
        work_items(["a", "a"], 1)


def _nnunet_check(root: Path) -> list[str]:
    """nnU-Net v2's raw-data rules, checked independently: dataset.json keys, file pairs, label values, grids."""
    ds = json.loads((root / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in ds, key
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz" and ds["labels"]["background"] == 0
    assert sorted(ds["labels"].values()) == list(range(len(ds["labels"])))  # consecutive integers
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    cases = [name[: -len("_0000.nii.gz")] for name in images]
    assert all(name.endswith("_0000.nii.gz") for name in images)
    assert [c + ".nii.gz" for c in cases] == labels and ds["numTraining"] == len(cases)
    for case in cases:
        image, label = read_volume(root / "imagesTr" / f"{case}_0000.nii.gz"), read_volume(root / "labelsTr" / f"{case}.nii.gz")
        assert same_grid(image, label)
        assert set(np.unique(label.array).tolist()) <= set(ds["labels"].values())
    return cases


def test_two_shards_make_a_valid_nnunet_and_monai_dataset(refs_dir, tmp_path):
    refs = read_references(refs_dir)
    paths = dataset_folder(tmp_path, 502, "Test")
    settings = GenerateSettings(variants=2, nodules=NODULES, **FAST)
    first = generate(refs, DEMO_MODEL, paths, settings, Shard(0, 2), progress="none")
    assert first["made"] == 2 and not first["complete"] and not (paths.root / "dataset.json").exists()
    second = generate(refs, DEMO_MODEL, paths, settings, Shard(1, 2), progress="none")
    assert second["made"] == 2 and second["complete"]

    cases = _nnunet_check(paths.root)
    assert cases == [f"LUNGSYN_chest{r}_v00{k}" for r in range(2) for k in range(2)]  # every case exactly once
    manifest = [json.loads(line) for line in (paths.root / "manifest.jsonl").read_text().splitlines()]
    items = work_items(["chest0", "chest1"], 2, 0)
    assert [m["case"] for m in manifest] == cases
    for m, item in zip(manifest, items):
        assert m["rank"] == items.index(item) % 2 and m["seed"] == item.seed and m["synthetic"] is True
        assert m["model_sha256"] == _sha(DEMO_MODEL)
        assert (m["sampler"], m["steps"], m["layout_source"]) == ("dpmpp2m", 2, "lung_mask+random_nodules")
        assert len(m["nodules"]) == 1 and Path(m["reference_path"]) == (refs_dir / f"{m['reference_id']}.nii.gz").resolve()
    with open(paths.root / "manifest.csv", newline="") as f:
        assert [row["case"] for row in csv.DictReader(f)] == cases
    datalist = json.loads((paths.root / "datalist.json").read_text())
    assert [(paths.root / e["image"]).is_file() and (paths.root / e["label"]).is_file() for e in datalist["training"]] == [True] * 4

    case = cases[0]
    image = read_volume(paths.image(case))
    layout = read_volume(paths.label(case))
    ref = read_volume(refs_dir / "chest0.nii.gz")
    assert same_grid(image, ref) and image.array.dtype == ref.array.dtype
    assert np.array_equal(image.array[layout.array == 0], ref.array[layout.array == 0])  # real outside the lungs
    assert (layout.array == 2).any() and (layout.array == 1).any()
    assert b"SYNTHETIC" in bytes(nib.load(paths.image(case)).header["descrip"])  # read by an independent library
    assert not (paths.root / ".partial").exists()


def _sha(path: Path) -> str:
    """SHA-256 of a file, computed here with hashlib (independent of lungddpm)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_interrupted_run_resumes_without_redoing_finished_cases(refs_dir, tmp_path, monkeypatch):
    import lungddpm.generation.generate as gen

    refs = read_references(refs_dir)[:1]
    paths = dataset_folder(tmp_path, 503, "Resume")
    settings = GenerateSettings(variants=2, nodules=NODULES, batch=1, **FAST)  # one case per synthesis call
    real_synthesize, calls = gen.synthesize_variants, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while making the second case
        return real_synthesize(*args, **kwargs)

    monkeypatch.setattr(gen, "synthesize_variants", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(refs, DEMO_MODEL, paths, settings, Shard(0, 1), progress="none")
    monkeypatch.setattr(gen, "synthesize_variants", real_synthesize)
    first, second = "LUNGSYN_chest0_v000", "LUNGSYN_chest0_v001"
    assert sorted(p.stem for p in (paths.root / "provenance").glob("*.json")) == [first]
    assert [p.name for p in (paths.root / "imagesTr").iterdir()] == [f"{first}_0000.nii.gz"]
    assert not (paths.root / "dataset.json").exists()
    stamp = paths.image(first).stat().st_mtime_ns

    # a case whose image was moved in but whose provenance was not (killed between the two) is made again
    paths.image(second).write_bytes(paths.image(first).read_bytes())
    summary = generate(refs, DEMO_MODEL, paths, settings, Shard(0, 1), progress="none")
    assert (summary["skipped"], summary["made"], summary["complete"]) == (1, 1, True)
    assert paths.image(first).stat().st_mtime_ns == stamp
    assert _nnunet_check(paths.root) == [first, second]
    assert read_volume(paths.image(second)).array.tolist() != read_volume(paths.image(first)).array.tolist()

    again = generate(refs, DEMO_MODEL, paths, settings, Shard(0, 1), progress="none")
    assert (again["made"], again["skipped"]) == (0, 2)
    with pytest.raises(ConfigError, match="other settings.*sampler"):
        generate(refs, DEMO_MODEL, paths, GenerateSettings(variants=2, nodules=NODULES, sampler="ddim", steps=2, device="cpu"),
                 Shard(0, 1), progress="none")


def test_csv_list_with_layouts_and_nodule_only_labels(tmp_path):
    phantom = make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=3,
                           nodules=[{"center_lps_mm": (-70.0, 10.0, 0.0), "diameter_mm": 24.0, "kind": "solid"}])
    write_volume(phantom.ct, tmp_path / "in" / "ct.nii.gz")
    write_volume(phantom.layout, tmp_path / "in" / "layout.nrrd")
    (tmp_path / "list.csv").write_text("id,image,layout\nP 7,in/ct.nii.gz,in/layout.nrrd\n")
    refs = read_references(tmp_path / "list.csv")
    assert refs[0].id == "P-7" and refs[0].layout == tmp_path / "in" / "layout.nrrd"
    paths = dataset_folder(tmp_path / "out", 504, "Nodules")
    generate(refs, DEMO_MODEL, paths, GenerateSettings(label_set="nodule", **FAST), Shard(0, 1), progress="none")
    assert json.loads((paths.root / "dataset.json").read_text())["labels"] == {"background": 0, "nodule": 1}
    _nnunet_check(paths.root)
    label = read_volume(paths.label("LUNGSYN_P-7_v000")).array
    layout = read_volume(paths.layout("LUNGSYN_P-7_v000")).array
    assert np.array_equal(label, (phantom.layout.array == 2).astype(np.uint8)) and label.any()
    assert np.array_equal(layout, phantom.layout.array)  # the exact input layout is kept for evaluation
    record = json.loads(paths.provenance("LUNGSYN_P-7_v000").read_text())
    assert record["layout_source"] == "file" and record["nodules"] == []
    with pytest.raises(ConfigError, match="have no layout.*--nodules"):
        generate(read_references(tmp_path / "in"), DEMO_MODEL, paths, GenerateSettings(**FAST), Shard(0, 1), progress="none")


def test_torchrun_two_processes_share_the_work(refs_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lungddpm",
           "generate", "--references", str(refs_dir), "--model", "demo", "--output", str(tmp_path), "--variants", "2",
           "--nodules", "1", "--diameter-range", "20", "25", "--steps", "2", "--device", "cpu", "--threads", "1",
           "--progress", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    made = sorted((e["rank"], e["case"]) for e in events if e["event"] == "case" and e["made"])
    assert made == [(0, "LUNGSYN_chest0_v000"), (0, "LUNGSYN_chest1_v000"), (1, "LUNGSYN_chest0_v001"), (1, "LUNGSYN_chest1_v001")]
    assert all(e["eta_s"] is not None and e["total"] == 4 for e in events if e["event"] == "case")
    assert any(e["event"] == "done" and e["complete"] for e in events)
    assert len(_nnunet_check(tmp_path / "Dataset501_LungDDPMSynthetic")) == 4
    assert finalize(dataset_folder(tmp_path, 501, "LungDDPMSynthetic"))["cases"] == 4


KILLED_WHILE_MOVING_IN = textwrap.dedent("""
    import os, signal, sys
    from lungddpm.cli import main
    real_replace = os.replace
    def replace_then_die(source, target):
        real_replace(source, target)
        if str(target).endswith("_v001_0000.nii.gz"):  # the second case's image is in place, its labels are not
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_finalize_after_a_kill_counts_complete_cases_and_a_resume_leaves_nothing_stale(refs_dir, tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "chest0.nii.gz").symlink_to(refs_dir / "chest0.nii.gz")
    args = ["generate", "--references", str(refs), "--model", "demo", "--output", str(tmp_path), "--variants", "2",
            "--nodules", "1", "--diameter-range", "20", "25", "--sampler", "dpmpp2m", "--steps", "2", "--device", "cpu",
            "--threads", "1", "--progress", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_MOVING_IN, *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    paths = dataset_folder(tmp_path, 501, "LungDDPMSynthetic")
    first, second = "LUNGSYN_chest0_v000", "LUNGSYN_chest0_v001"
    assert paths.image(second).is_file() and not paths.provenance(second).exists()  # half a case on disk
    assert any(is_temporary(p) for p in paths.staging.iterdir())  # and what the kill left in the staging folder

    assert main([*args, "--finalize"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["cases"], summary["set_aside"]) == (1, [second])
    assert _nnunet_check(paths.root) == [first]  # numTraining 1 = the images in imagesTr
    assert [e["case"] for e in json.loads((paths.root / "datalist.json").read_text())["training"]] == [first]

    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["made"] == 1
    assert _nnunet_check(paths.root) == [first, second]
    assert not paths.staging.exists() and not [p for p in paths.root.rglob("*") if is_temporary(p)]
    assert sorted(p.name for p in paths.root.iterdir()) == ["datalist.json", "dataset.json", "imagesTr", "labelsTr",
                                                            "manifest.csv", "manifest.jsonl", "provenance"]


def test_kinds_are_textures_for_attribute_models_and_refused_by_others(refs_dir, tmp_path):
    from helpers import random_model
    from lungddpm import save_checkpoint

    net = random_model(attributes=("texture",), in_channels=2, profile="released-patch")
    net.denoise_fn.attribute_embed.tables[0].weight.data.normal_(0.0, 1.0)  # a texture effect of many HU
    model = save_checkpoint(tmp_path / "attr.pt", net)
    refs = read_references(refs_dir)[:1]
    made = {}
    for kind in ("ground-glass", "solid"):
        paths = dataset_folder(tmp_path / kind, 501, "Kinds")
        settings = GenerateSettings(nodules=NoduleRequest(1, (20.0, 25.0), (kind,)), **FAST)
        generate(refs, model, paths, settings, Shard(0, 1), progress="none")
        record = json.loads(next((paths.root / "provenance").glob("*.json")).read_text())
        made[kind] = nib.load(next((paths.root / "imagesTr").glob("*.nii.gz"))).get_fdata()
        assert record["nodule_request"]["kinds"] == [kind]
    assert not np.array_equal(made["ground-glass"], made["solid"])  # same seed and layout: the kind changed the nodule
    settings = GenerateSettings(nodules=NoduleRequest(1, (20.0, 25.0), ("ground-glass",)), **FAST)
    with pytest.raises(ConfigError, match="takes no nodule attributes, so --kinds ground-glass cannot be honoured"):
        generate(refs, DEMO_MODEL, dataset_folder(tmp_path / "demo", 501, "Kinds"), settings, Shard(0, 1), progress="none")


# Batched variants against one at a time: the same noise per variant (its own generators), but not the same bits.
# oneDNN and BLAS choose kernels and blocking by batch size, so a batched pass sums in another order: in fp32 the
# difference of ε̂ is ~1e-6 and the HU images (integer pixel type) differ by at most 1 HU where a value sits on a
# rounding boundary; with bf16 (auto on a CPU with native bf16) the other order is rounded to bf16's 8 bits, and
# the variant moves by the bf16 tolerance of Testing/engine/evaluation/test_fidelity.py (measured on the demo:
# mean 0.4 HU, 99th percentile 3 HU in the lung). What the variant is (layout, seed, noise, provenance) is the same.
BATCH_TOLERANCE_HU = {"fp32": (0.01, 1.0, 1.0), "bf16": (2.0, 20.0, None)}  # mean, 99th percentile, max |ΔHU| in the lung


def _lung_differences(a: np.ndarray, b: np.ndarray, lung: np.ndarray) -> tuple[float, float, float]:
    """Mean, 99th percentile and max |a − b| over the lung region."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))[lung]
    return float(d.mean()), float(np.percentile(d, 99)), float(d.max())


@pytest.mark.parametrize("model", [DEMO_MODEL, DEMO_NODULES_MODEL], ids=["full-volume", "patch"])
def test_variants_sampled_together_give_what_each_gives_alone(refs_dir, tmp_path, model):
    """generate with 3 variants per network pass: the same cases, labels and provenance, images within the tolerance."""
    refs = read_references(refs_dir)[:1]
    nodules = NODULES if model == DEMO_MODEL else NoduleRequest(1, (8.0, 12.0))  # demo-nodules: one 24-mm cube each
    made = {}
    for name, batch in (("alone", 1), ("together", None)):
        paths = dataset_folder(tmp_path / name, 504, "Batch")
        generate(refs, model, paths, GenerateSettings(variants=3, nodules=nodules, batch=batch, **FAST), Shard(0, 1),
                 progress="none")
        made[name] = [paths, [json.loads(line) for line in (paths.root / "manifest.jsonl").read_text().splitlines()]]
    (alone, first), (together, second) = made["alone"], made["together"]
    assert [(m["batch"], m["batch_rule"], m["batch_cases"]) for m in first] == [(1, "given", 1)] * 3
    assert [(m["batch"], m["batch_rule"], m["batch_cases"]) for m in second] == [(3, "auto", 3)] * 3  # memory allows 3
    varying = {"batch", "batch_rule", "batch_cases", "sampling_seconds", "created_utc"}
    assert [{k: v for k, v in m.items() if k not in varying} for m in first] == \
        [{k: v for k, v in m.items() if k not in varying} for m in second]
    precision = first[0]["precision"]
    assert precision == pick_fast_path(torch.device("cpu")).precision  # generate runs precision auto
    bounds = BATCH_TOLERANCE_HU[precision]
    images = {}
    for m in first:
        labels = [read_volume(paths.label(m["case"])).array for paths in (alone, together)]
        assert np.array_equal(*labels)  # the layout does not pass through the network: bit for bit
        images[m["case"]] = [read_volume(paths.image(m["case"])).array for paths in (alone, together)]
        mean, p99, top = _lung_differences(*images[m["case"]], labels[0] > 0)
        assert mean <= bounds[0] and p99 <= bounds[1] and (bounds[2] is None or top <= bounds[2]), (m["case"], mean, p99, top)
    (a, _), (b, _), _ = images.values()
    assert not np.array_equal(a, b)  # each variant is its own (own seed and nodule), batched or not
