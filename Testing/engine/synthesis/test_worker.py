"""`lungddpm worker`: several synthesize jobs in one process, the model loaded once, the same output as `synthesize`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import read_volume, write_volume


def test_worker_serves_jobs_with_one_model_load_and_matches_synthesize(tmp_path):
    """Two jobs, one load; a bad job reports its error and the worker goes on; output equals the one-shot command's."""
    phantom = make_phantom(phantom_grid((48, 48, 24), (7.0, 7.0, 12.0)), seed=1, nodules=0)
    ct, layout = write_volume(phantom.ct, tmp_path / "ct.nrrd"), write_volume(phantom.layout, tmp_path / "layout.nrrd")
    common = ["--reference", str(ct), "--layout", str(layout), "--model", "demo", "--device", "cpu", "--steps", "1",
              "--threads", "1", "--progress", "json"]
    jobs = [common + ["--output", str(tmp_path / "a.nrrd"), "--seed", "1"],
            ["--reference", str(tmp_path / "missing.nrrd")] + common[2:] + ["--output", str(tmp_path / "b.nrrd")],
            common + ["--output", str(tmp_path / "c.nrrd"), "--seed", "2"]]
    worker = subprocess.run([sys.executable, "-m", "lungddpm", "worker"], input="".join(json.dumps(j) + "\n" for j in jobs),
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    events = [json.loads(line) for line in worker.stdout.splitlines() if line.startswith("{")]
    finished = [e for e in events if e.get("event") == "finished"]
    assert events[0] == {"event": "ready"} and [e["status"] for e in finished] == [0, 2, 0]
    assert [e["model_loads"] for e in finished] == [1, 1, 1]
    assert "missing.nrrd" in worker.stderr and "lungddpm: error:" in worker.stderr
    one_shot = subprocess.run([sys.executable, "-m", "lungddpm", "synthesize", *common, "--output",
                               str(tmp_path / "one-shot.nrrd"), "--seed", "2"], capture_output=True, text=True, timeout=300)
    assert one_shot.returncode == 0, one_shot.stderr
    assert np.array_equal(read_volume(tmp_path / "c.nrrd").array, read_volume(tmp_path / "one-shot.nrrd").array)
