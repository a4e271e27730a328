"""Interruption: SIGINT / SIGTERM end a command with one line and exit 130 / 143, leaving no partial output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lungddpm.cli import main
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.atomic import is_temporary
from lungddpm.io.volume import read_volume, write_volume
from lungddpm.runtime.interrupt import Terminated, exits_cleanly, leaves

ENGINE = Path(__file__).resolve().parents[2] / "engine"
SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ENGINE), "OMP_NUM_THREADS": "1"}


def _files(folder: Path) -> list[str]:
    """Every file below folder, hidden ones included, as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below folder."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in _files(folder)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with a small phantom chest CT (ct.nrrd) and its layout (layout.nrrd)."""
    folder = tmp_path_factory.mktemp("inputs")
    phantom = make_phantom(phantom_grid(size=(64, 64, 40), spacing=(5.5, 5.5, 6.0)), seed=0,
                           nodules=[{"center_lps_mm": (-70.0, 10.0, 0.0), "diameter_mm": 24.0, "kind": "solid"}])
    write_volume(phantom.ct, folder / "ct.nrrd")
    write_volume(phantom.layout, folder / "layout.nrrd")
    return folder


def _interrupt_when(cmd: list[str], busy, sig: int, tmp_path: Path) -> tuple[int, list[str], list[dict]]:
    """Run `lungddpm <cmd>`, send sig once a JSON progress record satisfies busy; (exit status, stderr lines, records)."""
    with open(tmp_path / "stderr.txt", "w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "lungddpm", *cmd], env=_env(), stdout=subprocess.PIPE,
                                 stderr=err, text=True)
        records = []
        try:
            for line in child.stdout:
                records.append(json.loads(line))
                if busy(records[-1]):
                    child.send_signal(sig)
                    break
            child.stdout.read()
            status = child.wait(timeout=60)
        finally:
            child.kill()
        err.seek(0)
        return status, err.read().splitlines(), records


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_while_sampling_ends_synthesize_with_one_line_and_nothing_written(inputs, tmp_path, name):
    sig, status = SIGNALS[name]
    before = _digests(inputs)
    out = tmp_path / "out" / "synthetic.nrrd"
    cmd = ["synthesize", "--reference", str(inputs / "ct.nrrd"), "--layout", str(inputs / "layout.nrrd"), "--model", "demo",
           "--output", str(out), "--sampler", "ddpm", "--device", "cpu", "--threads", "1", "--progress", "json"]
    code, stderr, records = _interrupt_when(cmd, lambda r: r.get("step", 0) >= 2, sig, tmp_path)
    assert records[-1]["total"] == 250 and records[-1]["step"] < 250  # interrupted while the sampler was busy
    assert (code, stderr) == (status, ["lungddpm: interrupted; nothing was written"])
    assert _files(tmp_path / "out") == [] and _digests(inputs) == before


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_ends_generate_keeping_the_finished_cases_only(inputs, tmp_path, name):
    sig, status = SIGNALS[name]
    refs = tmp_path / "refs"
    for n in range(2):
        write_volume(read_volume(inputs / "ct.nrrd"), refs / f"chest{n}.nrrd")
    before = _digests(refs)
    cmd = ["generate", "--references", str(refs), "--model", "demo", "--output", str(tmp_path / "gen"), "--steps", "10",
           "--nodules", "1", "--diameter-range", "20", "25", "--device", "cpu", "--threads", "1", "--progress", "json"]
    # the signal comes as the second case starts sampling (10 network passes, seconds)
    code, stderr, records = _interrupt_when(cmd, lambda r: r.get("event") == "case", sig, tmp_path)
    root = tmp_path / "gen" / "Dataset501_LungDDPMSynthetic"
    first = records[-1]["case"]
    assert (code, stderr) == (status, [f"lungddpm: interrupted; kept 1 finished case(s) of 2 in {root}; "
                                       "run the same command again to make the rest"])
    assert _files(root) == [f"imagesTr/{first}_0000.nii.gz", f"labelsTr/{first}.nii.gz", f"provenance/{first}.json"]
    assert _digests(refs) == before


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lungddpm.synthesis import synthesize
    from lungddpm.cli import main
    real_write, sig = synthesize.write_volume, int(sys.argv[1])
    def write_then_signal(*args, **kwargs):
        path = real_write(*args, **kwargs)
        os.kill(os.getpid(), sig)  # between the image and its labels
        return path
    synthesize.write_volume = write_then_signal
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_signal_between_image_and_labels_leaves_neither(inputs, tmp_path, sig):
    out = tmp_path / "out"
    cmd = ["synthesize", "--reference", str(inputs / "ct.nrrd"), "--layout", str(inputs / "layout.nrrd"), "--model", "demo",
           "--output", str(out / "synthetic.nii.gz"), "--steps", "2", "--device", "cpu", "--threads", "1", "--progress", "none"]
    done = subprocess.run([sys.executable, "-c", KILLER, str(int(sig)), *cmd], env=_env(), capture_output=True, text=True,
                          timeout=120)
    if sig == signal.SIGKILL:  # nothing runs after SIGKILL: the image's temporary stays, hidden, and no output
        assert done.returncode == -signal.SIGKILL
        assert [is_temporary(out / name) for name in _files(out)] == [True]
    else:
        assert done.returncode == 128 + sig and done.stderr.splitlines() == ["lungddpm: interrupted; nothing was written"]
        assert _files(out) == []


def test_the_entry_point_maps_interruptions_to_one_line_and_status(capsys):
    handler = signal.getsignal(signal.SIGTERM)

    def terminated() -> int:
        leaves("kept what was done")
        raise Terminated

    assert exits_cleanly(terminated)() == 143
    assert capsys.readouterr().err == "lungddpm: interrupted; kept what was done\n"

    def sigterm() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM raises Terminated while the entry point runs
        return 0

    assert exits_cleanly(sigterm)() == 143
    assert capsys.readouterr().err == "lungddpm: interrupted; nothing was written\n"  # each run starts from nothing
    assert signal.getsignal(signal.SIGTERM) == handler  # and puts the handler back
    assert exits_cleanly(lambda: 0)() == 0


def test_an_interrupted_demo_or_prepare_leaves_no_files(inputs, tmp_path, monkeypatch, capsys, one_thread):
    import lungddpm.demo.demo as demo
    import lungddpm.training.prepare as prepare

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_png", ctrl_c)  # the last of the demo's five files
    assert main(["demo", "--output", str(tmp_path / "demo"), "--device", "cpu", "--progress", "none"]) == 130
    assert capsys.readouterr().err == "lungddpm: interrupted; nothing was written\n"
    assert not (tmp_path / "demo").exists()

    cases = tmp_path / "cases"
    for n in range(2):
        write_volume(read_volume(inputs / "ct.nrrd"), cases / f"case{n}" / "ct.nrrd")
    real_write, calls = prepare.write_sample, []

    def second_case_interrupted(*args, **kwargs):
        calls.append(real_write(*args, **kwargs))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "write_sample", second_case_interrupted)
    command = ["prepare", "--input", str(cases), "--output", str(tmp_path / "prepared"), "--size", "16"]
    assert main(command) == 130 and len(calls) == 2
    assert capsys.readouterr().err == "lungddpm: interrupted; nothing was written\n"
    assert not (tmp_path / "prepared").exists()
    monkeypatch.undo()
    assert main(command) == 0
    assert _files(tmp_path / "prepared") == ["cases/case0/cond.npy", "cases/case0/ct.nii.gz", "cases/case0/layout.nii.gz",
                                             "cases/case0/x.npy", "cases/case1/cond.npy", "cases/case1/ct.nii.gz",
                                             "cases/case1/layout.nii.gz", "cases/case1/x.npy", "manifest.csv",
                                             "manifest.json", "nodules.csv", "skipped.json"]
