"""Metrics on hand-made cases, and the fast-sampler fidelity check on the bundled demo model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lungddpm import load_model, synthesize
from lungddpm.sampling.options import DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS
from lungddpm.demo.demo import DEMO_MODEL, demo_case
from lungddpm.evaluation.metrics import region_stats, seam_score
from lungddpm.io.volume import Volume
from lungddpm.model.fastpath import BF16_CPU_PATH, pick_fast_path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from fidelity import BASELINE, compare, made_from, run_setting  # noqa: E402  (the benchmark's comparison and ddpm baseline)


def _box_case():
    ref = Volume(np.full((20, 40, 40), -800, np.int16), spacing=(1.0, 1.0, 2.0))
    rng = np.random.default_rng(0)
    ref.array[:] += rng.normal(0, 20, ref.array.shape).astype(np.int16)
    lab = np.zeros(ref.array.shape, np.uint8)
    lab[5:15, 10:30, 10:30] = 1
    lab[9:11, 18:22, 18:22] = 2
    return ref, ref.with_array(lab)


def test_region_stats_on_a_hand_made_case():
    ref, layout = _box_case()
    image = ref.with_array(np.where(layout.array == 2, 40, -850).astype(np.int16))
    stats = region_stats(image, layout)
    assert stats["lung_mean_hu"] == -850 and stats["lung_std_hu"] == 0
    assert stats["nodule_mean_hu"] == 40 and stats["nodule_std_hu"] == 0


def test_seam_score_is_one_for_identical_images_and_high_for_a_pasted_block():
    ref, layout = _box_case()
    assert seam_score(ref, ref, layout) == pytest.approx(1.0)
    pasted = ref.array.copy()
    pasted[layout.array > 0] = 0  # a block of soft tissue pasted into air-like surroundings
    assert seam_score(ref.with_array(pasted), ref, layout) > 5.0


def test_compare_applies_the_tolerances():
    base = {"lung_mean_hu": -800.0, "lung_std_hu": 100.0, "nodule_mean_hu": -300.0, "seam_score": 1.0}
    close = {"lung_mean_hu": -790.0, "lung_std_hu": 110.0, "nodule_mean_hu": -280.0, "seam_score": 1.05}
    far = {**close, "lung_std_hu": 160.0}
    assert compare(close, base)["passes"] and not compare(far, base)["passes"]
    assert compare(far, base)["within_tolerance"]["lung_std_ratio"] is False


def test_the_default_sampler_matches_ddpm_on_the_demo_model():
    """The interactive default (DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS) passes the fidelity check against ddpm.

    ddpm's statistics (250 steps per seed, fp32) come from BASELINE (`python bench/fidelity.py --write-baseline
    --seeds 0 1`), refused if made from another model file or case; the default runs here on the same seeds.
    A solver pasting the reference at the wrong timestep's noise level moves the lung mean by about 120 HU
    (tolerance 25): planted, it fails this test.
    """
    baseline = json.loads(BASELINE.read_text())
    reference, layout, _ = demo_case(0)
    stale = {k: v for k, v in made_from(DEMO_MODEL, reference, layout).items() if baseline[k] != v}
    assert not stale, (f"{BASELINE.name} was made from another {', '.join(stale)}: run `{baseline['made_by']}` "
                       f"(PYTHONPATH=engine) and commit the new file")
    model = load_model(DEMO_MODEL)
    fast = run_setting(reference, layout, model, DEFAULT_SAMPLER, DEFAULT_SOLVER_STEPS, baseline["seeds"])
    result = compare(fast, baseline)
    print({"ddpm": baseline, "default": fast, **result})
    assert result["passes"], result  # the speed-up is measured by bench/fidelity.py, not asserted here


def test_bf16_autocast_stays_within_its_stated_tolerance_of_float32():
    """README's bf16 tolerance, on the trained demo model: lung-region |ΔHU| mean ≤ 2, 99th percentile ≤ 20.

    bf16 on a CPU is the whole bf16 path (SDPA, channels-last-3d): the default where the CPU has native bf16.
    """
    assert pick_fast_path(torch.device("cpu"), "bf16") == BF16_CPU_PATH
    model = load_model(DEMO_MODEL)
    reference, layout, _ = demo_case(0)
    full = synthesize(reference, layout, model, seed=0, device="cpu", precision="fp32").image
    half = synthesize(reference, layout, model, seed=0, device="cpu", precision="bf16").image
    region = layout.array > 0
    diff = np.abs(full.array.astype(np.float64) - half.array)[region]
    assert 0 < diff.mean() <= 2.0 and np.percentile(diff, 99) <= 20.0
    a, b = region_stats(full, layout), region_stats(half, layout)
    assert abs(a["lung_mean_hu"] - b["lung_mean_hu"]) <= 2.0 and abs(a["nodule_mean_hu"] - b["nodule_mean_hu"]) <= 5.0
