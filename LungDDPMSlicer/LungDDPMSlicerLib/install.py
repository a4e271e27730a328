"""Installing PyTorch without blocking Slicer: the same light-the-torch install SlicerPyTorch runs, as subprocesses.

SlicerPyTorch's `installTorch` runs light-the-torch inside Slicer's process, which freezes the GUI for the
minutes a CUDA wheel takes. Here the same two steps (pip install light-the-torch, then `ltt install torch`,
which picks the build matching the NVIDIA driver or the CPU build) run with Slicer's Python (PythonSlicer) as
background processes that the panel polls and can cancel, like an engine job.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from .engine import engine_error_message
from .process import BackgroundProcess

LIGHT_THE_TORCH = "light-the-torch>=0.5"  # SlicerPyTorch's own requirement


class InstallState(enum.Enum):
    """Where an installation stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def torch_install_commands(python: str, torch_requirement: str) -> list[list[str]]:
    """The commands that install torch into the interpreter `python`: light-the-torch, then torch through it."""
    return [[python, "-m", "pip", "install", LIGHT_THE_TORCH],
            [python, "-m", "light_the_torch", "install", f"torch{torch_requirement}"]]


class CommandSequence:
    """Run commands one after another in the background; poll() until it is no longer running."""

    def __init__(self, commands: Sequence[Sequence[str]], log: Callable[[str], None]) -> None:
        if not commands:
            raise ValueError("a command sequence needs at least one command")
        self.commands = [list(c) for c in commands]
        self.log = log
        self.state = InstallState.RUNNING
        self.error = ""
        self.index = 0
        self._process: BackgroundProcess | None = None

    @property
    def pid(self) -> int | None:
        """The process ID of the running command (None before start)."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the first command."""
        self._launch()

    def _launch(self) -> None:
        """Start the current command."""
        self.log(" ".join(self.commands[self.index]))
        self._process = BackgroundProcess(self.commands[self.index])
        self._process.start()

    def poll(self) -> None:
        """Pass output lines to the log; start the next command when one succeeds; stop at the first failure."""
        if self.state is not InstallState.RUNNING:
            return
        for _, line in self._process.read_lines():
            if line.strip():
                self.log(line)
        if not self._process.finished():
            return
        if self._process.returncode != 0:
            self.error = engine_error_message(self._process.stderr_lines, self._process.returncode)
            self.state = InstallState.FAILED
            self.log(f"Failed: {self.error}")
        elif self.index + 1 < len(self.commands):
            self.index += 1
            self._launch()
        else:
            self.state = InstallState.DONE

    def cancel(self) -> None:
        """Kill the running command and its children."""
        if self.state is InstallState.RUNNING and self._process is not None:
            self._process.kill_tree()
            self.state = InstallState.CANCELLED
            self.log("Cancelled")
