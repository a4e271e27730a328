"""The non-blocking PyTorch install: real subprocesses run in turn, a failure stops with its message, cancel kills."""

from __future__ import annotations

import sys
import time

from slicer_testing import alive  # also puts LungDDPMSlicerLib on sys.path
from LungDDPMSlicerLib import install


def run(sequence: install.CommandSequence, timeout_s: float = 60.0) -> None:
    """Poll a started sequence until it stops running."""
    deadline = time.monotonic() + timeout_s
    while sequence.state is install.InstallState.RUNNING and time.monotonic() < deadline:
        sequence.poll()
        time.sleep(0.05)


def test_torch_install_is_light_the_torch_in_slicers_python():
    """The commands: pip install light-the-torch, then ltt install torch with the requirement, in that Python."""
    commands = install.torch_install_commands("/opt/Slicer/bin/PythonSlicer", ">=2.1")
    assert commands == [["/opt/Slicer/bin/PythonSlicer", "-m", "pip", "install", "light-the-torch>=0.5"],
                        ["/opt/Slicer/bin/PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.1"]]


def test_commands_run_in_turn_and_a_failure_stops_with_its_message(tmp_path):
    """Two steps run in order with their output logged; a failing step ends FAILED with its last stderr line."""
    log = []
    marker = tmp_path / "first-ran"
    steps = [[sys.executable, "-c", f"open({str(marker)!r}, 'w').close(); print('step one')"],
             [sys.executable, "-c", f"import os; print('step two', os.path.exists({str(marker)!r}))"]]
    sequence = install.CommandSequence(steps, log.append)
    sequence.start()
    run(sequence)
    assert sequence.state is install.InstallState.DONE and "step one" in log and "step two True" in log
    failing = install.CommandSequence([[sys.executable, "-c", "import sys; sys.exit('no matching torch wheel')"],
                                       [sys.executable, "-c", "print('never')"]], log.append)
    failing.start()
    run(failing)
    assert failing.state is install.InstallState.FAILED and "no matching torch wheel" in failing.error
    assert "never" not in log


def test_cancel_kills_the_running_step():
    """Cancel ends a long step at once and leaves no process behind."""
    sequence = install.CommandSequence([[sys.executable, "-c", "import time; time.sleep(60)"]], lambda line: None)
    sequence.start()
    pid = sequence.pid
    sequence.cancel()
    assert sequence.state is install.InstallState.CANCELLED and not alive(pid)
