"""How a synthesis job runs the engine: one process per variant, or one long-lived worker per Slicer session.

Both runners take the full `python -m lungddpm synthesize ...` command and give the job the same things: output
lines, an exit status once the variant is over, the stderr lines of this variant, and kill(). The worker
(`lungddpm worker`) keeps the models it loaded, so a second variant, a new seed or a moved nodule does not pay
for loading the model again. Cancel kills the worker with all its children, as it kills a one-shot process;
the next job starts a fresh worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from .engine import json_line
from .process import STDOUT, BackgroundProcess

WORKER_FINISHED = "finished"  # mirrors lungddpm.cli.WORKER_FINISHED (checked in Testing/slicer)
WORKER_READY = "ready"
# The engine flushes a failed job's error line to stderr before its finished event on stdout, but the two pipes
# have their own reader threads: wait at most this long for that line once the event says the job failed.
ERROR_LINE_GRACE_S = 2.0


class OneShotRunner:
    """Each command in its own engine process."""

    def __init__(self) -> None:
        self._process: BackgroundProcess | None = None

    @property
    def pid(self) -> int | None:
        """The engine process of the current command."""
        return self._process.pid if self._process else None

    def run(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start the command."""
        self._process = BackgroundProcess(command, env=env)
        self._process.start()

    def read_lines(self) -> list[tuple[str, str]]:
        """The (stream, line) pairs printed since the last call."""
        return self._process.read_lines()

    def exit_status(self) -> int | None:
        """The command's exit status once it is over (output read to its end), else None."""
        return self._process.returncode if self._process.finished() else None

    def error_lines(self) -> list[str]:
        """The command's stderr lines read so far."""
        return self._process.stderr_lines

    def kill(self) -> None:
        """End the command's process and all its children."""
        if self._process is not None:
            self._process.kill_tree()


class EngineWorker:
    """One `python -m lungddpm worker` process that runs synthesize commands one after another."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.jobs_sent = 0
        self._process: BackgroundProcess | None = None
        self._env: dict[str, str] | None = None
        self._status: int | None = None
        self._stderr_mark = 0

    @property
    def pid(self) -> int | None:
        """The worker's process ID (None when none runs)."""
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        """Whether a worker process is running."""
        return self._process is not None and self._process.returncode is None

    def run(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Send a `... -m lungddpm synthesize ARGS` command's ARGS to the worker (started, or restarted for another env)."""
        command = [str(c) for c in command]
        if command[1:4] != ["-m", "lungddpm", "synthesize"]:
            raise ValueError(f"the worker runs `python -m lungddpm synthesize ...` commands, not {command[:4]}")
        if not self.alive or dict(env) != self._env:
            self.kill()
            self._env = dict(env)
            self._process = BackgroundProcess([self.python, "-m", "lungddpm", "worker"], env=self._env, stdin_pipe=True)
            self._process.start()
        self._status = None
        self._stderr_mark = len(self._process.stderr_lines)
        self._process.send_line(json.dumps(command[4:]))
        self.jobs_sent += 1

    def read_lines(self) -> list[tuple[str, str]]:
        """The (stream, line) pairs of the current command since the last call (the worker's own events taken out)."""
        lines = self._take(self._process.read_lines())
        deadline = time.monotonic() + ERROR_LINE_GRACE_S
        while self._status not in (None, 0) and not self.error_lines() and time.monotonic() < deadline:
            time.sleep(0.02)
            lines += self._take(self._process.read_lines())
        return lines

    def _take(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs without the worker's own events; a finished event sets the current command's exit status."""
        lines = []
        for stream, line in pairs:
            event = json_line(line) if stream == STDOUT else None
            if event is not None and event.get("event") == WORKER_FINISHED:
                self._status = int(event.get("status", 1))
            elif event is None or event.get("event") != WORKER_READY:
                lines.append((stream, line))
        return lines

    def exit_status(self) -> int | None:
        """The current command's exit status once the worker reported it (or died: its own status), else None."""
        if self._status is not None:
            return self._status
        if self._process.finished():
            return self._process.returncode or 1
        return None

    def error_lines(self) -> list[str]:
        """The stderr lines of the current command."""
        return self._process.stderr_lines[self._stderr_mark:]

    def kill(self) -> None:
        """End the worker and all its children (cancel, scene close, another device); the next run starts a new one."""
        if self._process is not None:
            self._process.kill_tree()
        self._process = None
