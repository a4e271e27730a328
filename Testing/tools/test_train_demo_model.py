"""tools/train_demo_model.py trains with the engine's one trainer and writes a loadable float16 EMA checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from lungddpm import load_model
from lungddpm.model.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_a_demo_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "demo.pt"
    res = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo_model.py"), "--output", str(out), "--phantoms", "2",
                          "--steps", "2", "--threads", "1", "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1])["output"] == str(out)
    saved = read_checkpoint(out)
    assert set(saved) >= {"ema", "config"} and "model" not in saved
    assert {v.dtype for v in saved["ema"].values() if v.is_floating_point()} == {torch.float16}
    model = load_model(out)
    assert model.config.image_size == 32 and model.config.profile == "native" and model.source.step == 2
    assert (tmp_path / "work" / "run" / "log.jsonl").is_file()  # the run went through `lungddpm train`'s own loop


def test_train_seed_sets_the_run_apart_from_the_phantoms(tmp_path):
    """--train-seed changes the training draws (the weights) but not the phantoms, and is recorded; same seed, same weights."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}

    def train(name: str, *extra: str) -> dict:
        """The EMA weights and training record of a 2-step run on the shared phantoms of tmp_path/work-<name>."""
        work = tmp_path / f"work-{name}"
        if name != "a":  # reuse the first run's prepared phantoms: the same data for every run
            work.mkdir()
            (work / "prepared-0").symlink_to(tmp_path / "work-a" / "prepared-0")
        res = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo_model.py"), "--output",
                              str(tmp_path / f"{name}.pt"), "--phantoms", "2", "--steps", "2", "--threads", "1",
                              "--work", str(work), *extra], capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        return read_checkpoint(tmp_path / f"{name}.pt")

    first, again, other = train("a"), train("b", "--train-seed", "0"), train("c", "--train-seed", "1")
    assert first["training"]["seed"] == other["training"]["seed"] == 0
    assert (first["training"]["train_seed"], other["training"]["train_seed"]) == (0, 1)
    assert all(torch.equal(first["ema"][k], again["ema"][k]) for k in first["ema"])
    assert not all(torch.equal(first["ema"][k], other["ema"][k]) for k in first["ema"])


def test_calcified_share_sets_how_many_training_nodules_are_calcified():
    """--calcified-share: the share of drawn nodules with a calcification pattern (codes 1-5; 6 = absent)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo_model", REPO / "tools" / "train_demo_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def calcified(share: float) -> float:
        codes = [tool.drawn_attributes(np.random.default_rng(n), share)["calcification"] for n in range(400)]
        assert set(codes) <= {1, 2, 3, 4, 5, 6}
        return float(np.mean([c != 6 for c in codes]))

    assert calcified(0.0) == 0.0 and calcified(1.0) == 1.0
    assert abs(calcified(0.25) - 0.25) < 0.06 and abs(calcified(0.5) - 0.5) < 0.06
    refused = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo_model.py"), "--nodules", "--output", "x.pt",
                              "--calcified-share", "1.5"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO / "engine")})
    assert refused.returncode == 2 and "--calcified-share 1.5 must be a share between 0 and 1" in refused.stderr


def test_calcified_share_reaches_the_prepared_cubes_and_the_record(tmp_path):
    """--nodules --calcified-share 0: every prepared cube's nodule is uncalcified (6), and the file records the share."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}
    out, work = tmp_path / "nodules.pt", tmp_path / "work"
    res = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo_model.py"), "--nodules", "--output", str(out),
                          "--phantoms", "1", "--steps", "1", "--threads", "1", "--calcified-share", "0",
                          "--work", str(work)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    cases = json.loads((work / "prepared-0" / "manifest.json").read_text())["cases"]
    codes = [n["attributes"]["calcification"] for case in cases for n in case["nodules"]]
    assert codes and set(codes) == {6}
    assert read_checkpoint(out)["training"]["calcified_share"] == 0.0
    assert load_model(out).config.solver_steps == 10  # the bundled model's measured default travels with a retrain
