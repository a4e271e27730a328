"""A Qt-free background process: start, read output lines without blocking (the GUI polls), kill the whole tree.

Works on Slicer 5.10 and later (no launchConsoleProcess needed) and headless. Output is read by two daemon
threads into a queue; `read_lines()` drains it. `kill_tree()` ends the process and every descendant: with
psutil when installed, and on POSIX also through the process group the child leads (start_new_session).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

STDOUT, STDERR = "stdout", "stderr"


class BackgroundProcess:
    """One child process whose stdout and stderr lines are collected in the background."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 stdin_pipe: bool = False) -> None:
        self.args = [str(a) for a in args]
        self.stdin_pipe = stdin_pipe  # True: send_line() writes to the child's stdin (a long-lived worker)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._stderr: list[str] = []

    def start(self) -> None:
        """Start the process in its own session/process group, with line-buffered text pipes."""
        options: dict = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
        stdin = subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL
        self.popen = subprocess.Popen(self.args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.env,
                                      cwd=self.cwd, **options)
        for name, stream in ((STDOUT, self.popen.stdout), (STDERR, self.popen.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, name: str, stream: IO[str]) -> None:
        """Put every line of one pipe into the queue until the pipe closes."""
        for line in stream:
            self._lines.put((name, line.rstrip("\r\n")))
        stream.close()

    def send_line(self, text: str) -> None:
        """Write one line to the child's stdin (started with stdin_pipe) and flush it."""
        self.popen.stdin.write(text.rstrip("\n") + "\n")
        self.popen.stdin.flush()

    @property
    def pid(self) -> int | None:
        """The child's process ID, or None before start()."""
        return self.popen.pid if self.popen else None

    def read_lines(self) -> list[tuple[str, str]]:
        """All (stream, line) pairs received since the last call, without waiting."""
        lines = []
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                return lines
            if name == STDERR:
                self._stderr.append(line)
            lines.append((name, line))

    @property
    def stderr_lines(self) -> list[str]:
        """The stderr lines returned by read_lines() so far."""
        return list(self._stderr)

    def finished(self) -> bool:
        """Whether the process has exited and both pipes have been read to their end."""
        return (self.popen is not None and self.popen.poll() is not None
                and not any(reader.is_alive() for reader in self._readers))

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited, else None."""
        return self.popen.poll() if self.popen else None

    def wait(self, timeout: float | None = None, poll_s: float = 0.05) -> int:
        """Block until finished() (TimeoutError after timeout seconds) and return the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.args[0]} still running after {timeout} s")
            time.sleep(poll_s)
        return self.popen.returncode

    def kill_tree(self, grace_s: float = 3.0) -> None:
        """Terminate the process and all its descendants (kill those still alive after grace_s); wait for them."""
        if self.popen is None or (self.popen.poll() is not None and not _has_group(self.popen.pid)):
            return
        descendants = _descendants(self.popen.pid)
        _signal_tree(self.popen, descendants, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _any_alive(self.popen, descendants):
            time.sleep(0.05)
        if _any_alive(self.popen, descendants):
            _signal_tree(self.popen, descendants, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        self.popen.wait()
        for reader in self._readers:
            reader.join(timeout=grace_s)


def _descendants(pid: int) -> list:
    """psutil.Process objects of every descendant of pid (empty without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _has_group(pid: int) -> bool:
    """Whether processes of the group that pid led (POSIX) are still alive."""
    if os.name != "posix":
        return False
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_tree(popen: subprocess.Popen, descendants: list, sig: int) -> None:
    """Send sig to the process, its group (POSIX) and each known descendant; Windows: taskkill /T."""
    if os.name == "posix":
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            pass
    elif popen.poll() is None:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(popen.pid)], capture_output=True, check=False)
    if descendants:  # only non-empty when psutil is installed
        import psutil

        for process in descendants:
            try:
                process.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone already, or not ours
                pass


def _any_alive(popen: subprocess.Popen, descendants: list) -> bool:
    """Whether the process, its process group (POSIX) or any known descendant is still running (zombies are gone)."""
    if popen.poll() is None or _has_group(popen.pid):
        return True
    return any(_running(process) for process in descendants)


def _running(process: object) -> bool:
    """Whether a psutil.Process is running and not a zombie."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
