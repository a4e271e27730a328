"""The background-process runner and the engine's line protocol, with real subprocesses (no MRML needed)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from slicer_testing import MODULE_DIR, alive, require_slicer_core  # also puts LungDDPMSlicerLib on sys.path
from LungDDPMSlicerLib import engine, process
from LungDDPMSlicerLib.process import STDERR, STDOUT, BackgroundProcess


def python(code: str) -> list[str]:
    """A command running a Python snippet with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def wait_for_lines(runner: BackgroundProcess, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    """Poll the runner until at least `count` lines arrived."""
    lines: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        lines += runner.read_lines()
        time.sleep(0.02)
    assert len(lines) >= count, f"only {lines} within {timeout} s"
    return lines


def test_progress_lines_are_parsed_from_a_running_process():
    """JSON step lines, the done record, plain log lines and the stderr error line of an engine-like child."""
    child = python('''
        import json, sys, time
        print("loading model")
        for step in (1, 2, 3):
            print(json.dumps({"step": step, "total": 3, "elapsed_s": step * 0.5, "eta_s": (3 - step) * 0.5}), flush=True)
            time.sleep(0.05)
        print(json.dumps({"event": "done", "image": "/tmp/x.nrrd", "labels": "/tmp/x_labels.nrrd"}))
        print("lungddpm: error: layout.nrrd: 1 nodule(s) lie entirely outside the lung", file=sys.stderr)
        sys.exit(2)
    ''')
    runner = BackgroundProcess(child)
    runner.start()
    assert runner.wait(timeout=20) == 2
    lines = runner.read_lines()
    records = [engine.parse_progress_line(line) for stream, line in lines if stream == STDOUT]
    assert records[0] is None  # "loading model" is a log line
    assert records[1:4] == [engine.StepProgress(s, 3, s * 0.5, (3 - s) * 0.5) for s in (1, 2, 3)]
    assert records[4] == engine.Done(Path("/tmp/x.nrrd"), Path("/tmp/x_labels.nrrd"))
    assert (STDERR, "lungddpm: error: layout.nrrd: 1 nodule(s) lie entirely outside the lung") in lines
    assert engine.engine_error_message(runner.stderr_lines, 2) == "layout.nrrd: 1 nodule(s) lie entirely outside the lung"


def test_line_protocol_edge_cases():
    """Non-progress JSON and broken lines are log lines; a crash gives its last stderr line and the status."""
    assert engine.parse_progress_line('{"step": 1, "total": 0}') is None
    assert engine.parse_progress_line("{not json") is None
    assert engine.parse_progress_line("[1, 2]") is None
    assert engine.parse_progress_line('{"step": 2, "total": 5, "elapsed_s": 1.0, "eta_s": null}') == \
        engine.StepProgress(2, 5, 1.0, None)
    crash = ["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: CUDA out of memory"]
    assert engine.engine_error_message(crash, 1) == "the engine stopped with exit status 1: RuntimeError: CUDA out of memory"
    assert engine.engine_error_message([], -9) == "the engine stopped with exit status -9 and printed no error"


def test_read_lines_does_not_block_while_the_child_is_silent():
    """read_lines() returns at once while the child prints nothing."""
    runner = BackgroundProcess(python("import time; time.sleep(30)"))
    runner.start()
    try:
        start = time.monotonic()
        assert runner.read_lines() == [] and not runner.finished()
        assert time.monotonic() - start < 0.5
    finally:
        runner.kill_tree()


TREE = '''
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session={escape})
    print(grandchild.pid, flush=True)
    time.sleep(120)
'''


@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "process-group"])
def test_cancel_kills_child_and_grandchild(with_psutil, monkeypatch):
    """kill_tree() ends the child and the grandchild it started, with psutil or through the process group."""
    if not with_psutil:
        monkeypatch.setattr(process, "_descendants", lambda pid: [])
    runner = BackgroundProcess(python(TREE.format(escape=False)))
    runner.start()
    (_, grandchild), = wait_for_lines(runner, 1)
    child, grandchild = runner.pid, int(grandchild)
    assert alive(child) and alive(grandchild)
    runner.kill_tree()
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child) and not alive(grandchild)
    assert runner.finished() and runner.returncode != 0


def test_psutil_also_kills_a_grandchild_that_left_the_process_group():
    """A grandchild in its own session escapes the group signal; the psutil tree walk still ends it."""
    pytest.importorskip("psutil", reason="psutil is optional; this case needs it")
    runner = BackgroundProcess(python(TREE.format(escape=True)))
    runner.start()
    (_, grandchild), = wait_for_lines(runner, 1)
    grandchild = int(grandchild)
    runner.kill_tree()
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(runner.pid) and not alive(grandchild)


def option(command: list[str], flag: str) -> str | None:
    """The value after a flag of a command line, or None when the flag is absent."""
    return command[command.index(flag) + 1] if flag in command else None


def test_engine_command_and_environment(tmp_path):
    """The subprocess command and environment: engine on PYTHONPATH first, CPU forced by hiding CUDA GPUs."""
    command = engine.synthesize_command("PythonSlicer", Path("r.nrrd"), Path("l.nrrd"), Path("m.pt"), Path("o.nrrd"),
                                        seed=4, device="cpu", steps=None)
    assert command[:4] == ["PythonSlicer", "-m", "lungddpm", "synthesize"]
    assert option(command, "--progress") == "json" and option(command, "--seed") == "4"
    with pytest.raises(ValueError, match="device"):
        engine.synthesize_command("p", Path("r"), Path("l"), Path("m"), Path("o"), seed=0, device="gpu")
    env = engine.engine_environment(tmp_path, "cpu", {"PYTHONPATH": "/other"})
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/other"]) and env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "CUDA_VISIBLE_DEVICES" not in engine.engine_environment(tmp_path, "auto", {})
    nodule = engine.add_nodule_command("p", Path("l"), Path("o"), [1.5, -2.0, 3.0], 10.0, 0.3, 2)
    assert nodule[nodule.index("--center") + 1:nodule.index("--center") + 4] == ["1.5", "-2.0", "3.0"]
    assert "--kinds" not in nodule  # a nodule's attributes travel as segment tags, sent with the synthesis
    assert option(nodule, "--irregularity") == "0.3" and "--nodule" not in nodule
    described = engine.add_nodule_command("p", Path("l"), Path("o"), [0, 0, 0], 10.0, 0.3, 2,
                                          {"spiculation": 5.0, "lobulation": 2.5})
    assert option(described, "--nodule") == "lobulation=2.5, spiculation=5" and "--irregularity" not in described
    with pytest.raises(engine.EngineNotFoundError, match="rebuild or reinstall"):
        engine.find_engine_dir(tmp_path / "module")
    assert engine.find_engine_dir(MODULE_DIR) == MODULE_DIR.parent / "engine"


def test_sampler_steps_precision_and_patch_spacing_reach_the_command_line():
    """Solvers get --steps (engine default when None) and no --variant; ddpm gets --variant, never --steps."""
    def command(**options) -> list[str]:
        """A synthesize command line with these options."""
        return engine.synthesize_command("p", Path("r"), Path("l"), Path("m"), Path("o"), seed=0,
                                         **{"device": "auto", **options})

    default = command()
    assert (option(default, "--sampler"), option(default, "--precision")) == ("dpmpp2m", "auto")  # the engine's default
    assert option(default, "--steps") is None and option(default, "--variant") is None
    assert option(default, "--patch-spacing") is None
    for sampler in ("dpmpp2m", "dpmpp3m", "ddim"):
        solver = command(sampler=sampler, steps=25, precision="bf16")
        assert (option(solver, "--sampler"), option(solver, "--steps"), option(solver, "--precision")) == \
            (sampler, "25", "bf16")
    ddpm = command(sampler="ddpm", steps=25, variant="released")
    assert (option(ddpm, "--sampler"), option(ddpm, "--variant"), option(ddpm, "--steps")) == ("ddpm", "released", None)
    assert option(command(patch_spacing_mm=1.25), "--patch-spacing") == "1.25"
    assert option(command(device="cuda", precision="fp16"), "--precision") == "fp16"
    assert [option(command(device=device, precision="auto"), "--precision") for device in engine.DEVICES] == \
        ["auto"] * len(engine.DEVICES)  # auto runs on every device: the engine resolves it there
    assert option(command(precision="fp32"), "--precision") == "fp32"  # an explicit choice passes as it is
    refused = [({"sampler": "euler"}, "sampler 'euler'"), ({"precision": "fp8"}, "precision 'fp8'"),
               ({"variant": "released"}, "only for the ddpm sampler"), ({"steps": 0}, "at least 1"),
               ({"patch_spacing_mm": 0.0}, "positive voxel size"), ({"device": "cpu", "precision": "fp16"}, "bf16 or fp32")]
    for options, message in refused:
        with pytest.raises(ValueError, match=message):
            command(**options)


def test_run_engine_reports_the_engine_error(tmp_path):
    """A real `lungddpm lung-mask` on a non-CT image fails with the engine's one-line message."""
    import numpy as np
    import SimpleITK as sitk

    require_slicer_core()  # jobs works on MRML nodes
    from LungDDPMSlicerLib import jobs

    image = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(image))
    with pytest.raises(jobs.EngineError) as error:
        jobs.run_engine(engine.lung_mask_command(sys.executable, image, tmp_path / "mask.nrrd"),
                        engine.find_engine_dir(MODULE_DIR), timeout_s=120)
    message = str(error.value)
    assert "does not look like a CT in HU" in message and "Traceback" not in message and "\n" not in message


def test_a_worker_jobs_error_line_is_read_even_when_it_comes_after_the_finished_event(tmp_path):
    """The error line and the finished event travel on two pipes: a late error line still becomes the job's message.

    A stand-in `lungddpm worker` (a module on PYTHONPATH, not the engine) answers a job with the finished event of a
    refused job first and its one-line error 0.3 s later, the order the two reader threads can deliver them in.
    """
    from LungDDPMSlicerLib import worker

    package = tmp_path / "stand-in" / "lungddpm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(f"""
        import json, sys, time
        for line in sys.stdin:
            print(json.dumps({{"event": {worker.WORKER_FINISHED!r}, "status": 2}}), flush=True)
            time.sleep(0.3)
            print("lungddpm: error: argument --steps: 21 is more than the model's 20 steps", file=sys.stderr, flush=True)
        """))
    runner = worker.EngineWorker(sys.executable)
    try:
        runner.run([sys.executable, "-m", "lungddpm", "synthesize", "--steps", "21"],
                   {**os.environ, "PYTHONPATH": str(package.parent)})
        deadline = time.monotonic() + 20
        while runner.exit_status() is None and time.monotonic() < deadline:
            runner.read_lines()
            time.sleep(0.02)
        assert runner.exit_status() == 2
        assert engine.engine_error_message(runner.error_lines(), 2) == \
            "argument --steps: 21 is more than the model's 20 steps"
    finally:
        runner.kill()
