"""tools/train_demo_model.py trains with the engine's one trainer and writes a loadable float16 EMA checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
