"""`lungddpm evaluate`: paired metrics on hand-made cases, FID/MMD maths, 3-D ResNet backbones, the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lungddpm.evaluation.backbones import ResNet3D, _infer_architecture, load_backbone, random_backbone
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.generation.export import DatasetPaths, dataset_folder
from lungddpm.evaluation.distances import fid, frechet_distance, mmd
from lungddpm.errors import CheckpointError
from lungddpm.evaluation.paired import lung_masked_mse, nodule_adherence, paired_metrics, spurious_blobs
from lungddpm.evaluation.features import extract_features
from lungddpm.generation.generate import GenerateSettings, NoduleRequest, generate, read_references
from lungddpm.generation.shards import Shard
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import Volume, write_volume

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """Boolean ball in voxel units on a (k, j, i) grid."""
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2


@pytest.fixture()
def case() -> tuple[Volume, Volume]:
    """A 32³ chest-like case (2 mm voxels): tissue at 40 HU, a lung ball at about −850 HU, a nodule label (2)."""
    shape = (32, 32, 32)
    rng = np.random.default_rng(0)
    lung = _ball(shape, (16, 16, 16), 11)
    hu = np.where(lung, -850, 40) + rng.normal(0, 20, shape)
    layout = np.where(lung, 1, 0).astype(np.uint8)
    layout[_ball(shape, (16, 16, 10), 3)] = 2
    grid = dict(spacing=(2.0, 2.0, 2.0), origin=(-30.0, 5.0, 12.0))
    return Volume(hu.astype(np.int16), **grid), Volume(layout, **grid)


def test_identical_images_give_zero_mse_and_no_seam(case):
    reference, layout = case
    m = paired_metrics(reference, reference, layout)
    assert m["mse_model"] == 0 and m["mse_hu2"] == 0 and m["seam_score"] == pytest.approx(1.0)
    assert m["nodule_adherence"] == 0 and m["spurious_blobs"] == 0  # the reference's "nodule" is aerated lung


def test_mse_follows_the_formula_in_hu_and_model_space(case):
    reference, layout = case
    shifted = reference.with_array(np.where(layout.array > 0, reference.array + 100, reference.array).astype(np.int16))
    m = lung_masked_mse(shifted, reference, layout)
    assert m["mse_hu2"] == pytest.approx(100.0**2)
    assert m["mse_model"] == pytest.approx((100 / 1500 * 2) ** 2)  # window [−1000, 500] HU -> [−1, 1]
    outside = reference.with_array(np.where(layout.array == 0, reference.array + 500, reference.array).astype(np.int16))
    assert lung_masked_mse(outside, reference, layout)["mse_hu2"] == 0  # only the lung region counts


def test_lung_pasted_in_without_blending_gives_a_high_seam_score():
    shape = (32, 32, 32)
    rng = np.random.default_rng(0)
    lung = _ball(shape, (16, 16, 16), 11)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(np.where(lung, -850.0, 40.0)), 2.0))
    reference = Volume((smooth + rng.normal(0, 20, shape)).astype(np.int16), spacing=(2.0, 2.0, 2.0))
    layout = reference.with_array(lung.astype(np.uint8))
    # a block of lung texture pasted into the lung region: a sharp edge where the reference has a gradual border
    pasted = np.where(lung, -850 + rng.normal(0, 20, shape), reference.array)
    score = paired_metrics(reference.with_array(pasted.astype(np.int16)), reference, layout)["seam_score"]
    assert score > 1.5, score
    blended = reference.with_array(np.where(lung, reference.array + rng.normal(0, 20, shape), reference.array).astype(np.int16))
    assert paired_metrics(blended, reference, layout)["seam_score"] == pytest.approx(1.0, abs=0.15)


def test_soft_tissue_nodule_adheres_and_an_extra_blob_is_spurious(case):
    reference, layout = case
    shape = reference.array.shape
    synthetic = reference.array.copy()
    synthetic[layout.array == 2] = 30  # the layout's nodule filled with soft tissue
    assert nodule_adherence(reference.with_array(synthetic), layout) == 1.0
    blob = _ball(shape, (16, 16, 22), 2.5)  # 65 voxels = 520 mm³, in the lung, far from the layout nodule
    assert (layout.array[blob] == 1).all()
    synthetic[blob] = 50
    syn = reference.with_array(synthetic)
    assert spurious_blobs(syn, reference, layout) == {"spurious_blobs": 1, "spurious_volume_mm3": float(blob.sum() * 8)}
    in_reference = reference.with_array(np.where(blob, 45, reference.array).astype(np.int16))
    assert spurious_blobs(syn, in_reference, layout)["spurious_blobs"] == 0  # the reference has it: anatomy
    tiny = reference.array.copy()
    tiny[16, 16, 22] = 50  # one voxel: 8 mm³, below the size threshold
    assert spurious_blobs(reference.with_array(tiny), reference, layout)["spurious_blobs"] == 0
    assert math.isnan(nodule_adherence(reference, layout.with_array(np.minimum(layout.array, 1))))


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)
    # commuting (diagonal) covariances: |μ1 − μ2|² + Σ (√a − √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # non-commuting 2 x 2: Tr √(Σ1 Σ2) = √(tr(Σ1 Σ2) + 2 √det(Σ1 Σ2)) for a matrix with non-negative eigenvalues
    s1, s2 = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    cross = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1 @ s2)))
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(np.trace(s1) + np.trace(s2) - 2 * cross)
    # on samples, FID approaches the distance of the generating Gaussians
    big = fid(rng.normal(size=(20000, 3)) * np.sqrt(a), rng.normal(size=(20000, 3)) * np.sqrt(b) + (mu2 - mu1))
    assert big == pytest.approx(expected, rel=0.05)
    # rank-deficient covariances (fewer samples than features) stay finite and non-negative
    assert 0 <= fid(rng.normal(size=(3, 64)), rng.normal(size=(4, 64))) < math.inf


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + 0.5
    for kernel in ("rbf", "polynomial"):
        same, other = mmd(x, y, kernel), mmd(x, shifted, kernel)
        assert abs(same) < 0.01 and other > 0.05 and other > 20 * abs(same), (kernel, same, other)
    # the estimator against a brute-force double loop (unbiased: no i == j terms)
    a, b, h = x[:6], shifted[:5], 3.0
    k = lambda u, v: math.exp(-float(np.sum((u - v) ** 2)) / h)  # noqa: E731
    brute = (sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
             + sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
             - 2 * sum(k(u, v) for u in a for v in b) / 30)
    assert mmd(a, b, "rbf", bandwidth=h) == pytest.approx(brute)


def test_random_backbone_gives_features_of_32_cubed_volumes():
    net, info = random_backbone(10, "B", seed=3)
    volumes = [make_phantom(phantom_grid(size=(40, 40, 24), spacing=(9.0, 9.0, 10.0)), seed=s).ct for s in range(2)]
    feats = extract_features(volumes, net, size=32)
    assert feats.shape == (2, 512) and np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    again, _ = random_backbone(10, "B", seed=3)
    assert np.array_equal(extract_features(volumes[:1], again, size=32), feats[:1])  # the seed fixes the weights
    assert info.weights == "random init, seed 3" and "resnet_10" in info.describe()


@pytest.mark.parametrize("depth, shortcut", [(10, "B"), (18, "A")])
def test_medicalnet_style_file_loads_and_reproduces_features(tmp_path, depth, shortcut):
    torch.manual_seed(0)
    net = ResNet3D(depth, shortcut).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):  # trained-looking statistics, so a wrong mapping shows
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    sd["module.conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)  # MedicalNet's segmentation head: dropped
    path = tmp_path / f"resnet_{depth}.pth"
    torch.save({"state_dict": sd}, path)
    loaded, info = load_backbone(path)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert (loaded.depth, loaded.shortcut) == (depth, shortcut)
    assert info.sha256 in info.describe() and info.weights == path.name


def test_bottleneck_depth_is_read_from_the_keys():
    sd = ResNet3D(50, "B").state_dict()
    assert _infer_architecture(sd, Path("resnet_50.pth")) == (50, "B")
    assert ResNet3D(50).features == 2048


def test_wrong_backbone_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no state dict of tensors; give a MedicalNet"):
        load_backbone(DEMO_MODEL)
    torch.save({"state_dict": {"module.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a MedicalNet 3-D ResNet"):
        load_backbone(tmp_path / "other.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_backbone(text)


def _generated(tmp_path: Path, cases: int) -> DatasetPaths:
    """A data set made by generate from small phantoms c0, c1, ... (demo model, 2 solver steps, one nodule each)."""
    refs = tmp_path / "refs"
    for n in range(cases):
        write_volume(make_phantom(phantom_grid(size=(80, 80, 48), spacing=(4.5, 4.5, 5.0)), seed=n).ct, refs / f"c{n}.nii.gz")
    paths = dataset_folder(tmp_path / "out", 505, "Eval")
    generate(read_references(refs), DEMO_MODEL, paths,
             GenerateSettings(variants=1, sampler="dpmpp2m", steps=2, device="cpu", nodules=NoduleRequest(1, (20.0, 25.0))),
             Shard(0, 1), progress="none")
    return paths


def test_evaluate_command_writes_a_report(tmp_path):
    paths = _generated(tmp_path, 2)
    env = {"PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "lungddpm", "evaluate", str(paths.root), "--output", str(tmp_path / "report"),
                          "--feature-size", "32", "--threads", "1", "--device", "cpu", "--backbone-seed", "5"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["cases"] == 2 and len(report["paired"]["cases"]) == 2
    for row in report["paired"]["cases"]:
        assert row["mse_model"] > 0 and 0.5 < row["seam_score"] < 2 and 0 <= row["nodule_adherence"] <= 1
    d = report["distribution"]
    assert d["n_real"] == 2 and d["n_synthetic"] == 2 and d["fid"] >= 0 and "random init, seed 5" in d["backbone"]
    page = (tmp_path / "report" / "report.md").read_text()
    assert "| FID |" in page and "random init, seed 5" in page and "| seam_score |" in page
    for name in report["previews"]:
        assert f"![{name}]({name})" in page and (tmp_path / "report" / name).stat().st_size > 1000


def test_evaluate_names_damaged_and_missing_cases_and_fails_unless_told_to_skip(tmp_path):
    paths = _generated(tmp_path, 3)
    truncated, missing, intact = (f"LUNGSYN_c{n}_v000" for n in range(3))
    image = paths.image(truncated)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # cut in the middle of its voxel data
    paths.label(missing).unlink()
    before = {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file()}
    env = {"PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "lungddpm", "evaluate", str(paths.root), "--output", str(tmp_path / "report"),
               "--feature-size", "16", "--threads", "1", "--device", "cpu"]
    res = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lungddpm: error: ") and "Traceback" not in res.stderr
    assert "2 damaged or missing case(s)" in lines[0] and "--skip-damaged" in lines[0]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    damaged = {d["case"]: d["reason"] for d in report["damaged"]}
    assert set(damaged) == {truncated, missing} and report["cases"] == 1
    assert image.name in damaged[truncated] and "truncated" in damaged[truncated]
    assert paths.label(missing).name in damaged[missing] and "missing" in damaged[missing]
    assert [row["case"] for row in report["paired"]["cases"]] == [intact]
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Damaged or missing cases: 2" in page and truncated in page and missing in page
    skipped = subprocess.run(command + ["--skip-damaged"], capture_output=True, text=True, timeout=300, env=env)
    assert skipped.returncode == 0 and skipped.stderr == "", skipped.stderr[-2000:]
    assert json.loads(skipped.stdout)["damaged"] == 2
    assert {p: p.read_bytes() for p in paths.root.rglob("*") if p.is_file()} == before  # the data set is untouched
