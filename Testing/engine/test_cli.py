"""The `lungddpm` command line: real subprocesses, exit codes, messages without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lungddpm", *args], capture_output=True, text=True, timeout=300)


def test_info_describes_released_checkpoint(tiny_checkpoint):
    res = _run("info", str(tiny_checkpoint))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["source"]["format"] == "released" and len(info["source"]["sha256"]) == 64
    assert info["config"]["image_size"] == 32 and info["config"]["timesteps"] == 20


def test_bad_checkpoint_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    res = _run("info", str(bad))
    assert res.returncode == 2
    assert "bad.pt" in res.stderr and "Traceback" not in res.stderr
