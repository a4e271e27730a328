"""Progress reporting for long runs: JSON lines for machines (the Slicer module), a bar for people."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[int, int], None]  # progress(step, total), called after each step
PROGRESS_MODES = ("bar", "json", "none")  # a text bar for people, JSON lines for machines, or nothing


def check_mode(mode: str) -> str:
    """The mode itself, or ValueError when it is not one of PROGRESS_MODES."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode {mode!r} must be one of {PROGRESS_MODES}")
    return mode


class Progress:
    """A (step, total) callback that prints one JSON object per step or a one-line text bar.

    Optional fields (e.g. a training loss) join the JSON object and follow the bar as key=value (a field
    "event" names the bar's line instead of the label). A bar line printed with keep=True, or to a stream
    that is not a terminal (a job's log file), stays instead of being overwritten by the next one. A run
    resumed at start_step counts its ETA from the steps done since then.
    """

    def __init__(self, mode: str = "bar", stream: TextIO | None = None, label: str = "sampling", start_step: int = 0) -> None:
        self.mode = check_mode(mode)
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.label = label
        self.start_step = start_step
        self.start = time.perf_counter()

    def __call__(self, step: int, total: int, fields: dict | None = None, keep: bool = False) -> None:
        """Report that step of total is done (with optional fields)."""
        elapsed = time.perf_counter() - self.start
        done = step - self.start_step
        eta = elapsed / done * (total - step) if done > 0 else None
        if self.mode == "json":
            record = {**(fields or {}), "step": step, "total": total, "elapsed_s": round(elapsed, 3),
                      "eta_s": None if eta is None else round(eta, 3)}
            print(json.dumps(record), file=self.stream, flush=True)
        elif self.mode == "bar":
            width = 30
            filled = int(width * step / total)
            eta_text = f"{eta:6.0f} s left" if eta is not None else ""
            fields = dict(fields or {})
            label = fields.pop("event", self.label)
            extra = "".join(f"  {k}={_short(v)}" for k, v in fields.items())
            end = "\n" if step == total or keep or not _is_terminal(self.stream) else ""
            print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {step}/{total} {elapsed:6.0f} s {eta_text}{extra}",
                  end=end, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    """Whether a stream is an interactive terminal (a bar line may then be redrawn in place)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _short(value: object) -> str:
    """A field's value for the bar: numbers to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class BatchProgress:
    """Progress of a batch over cases: this rank's share and the whole run, with ETAs, as JSON or a text line."""

    def __init__(self, mode: str, rank: int, world_size: int, stream: TextIO | None = None) -> None:
        self.mode = check_mode(mode)
        self.rank = rank
        self.world_size = world_size
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.start = time.perf_counter()
        self.made = 0

    def case_done(self, case: str, shard_done: int, shard_total: int, done_total: int, total: int, made: bool) -> dict:
        """Report one finished (made or skipped) case; ETAs use the time per case made in this run."""
        self.made += int(made)
        elapsed = time.perf_counter() - self.start
        per_case = elapsed / self.made if self.made else None
        record = {
            "event": "case", "case": case, "made": made, "rank": self.rank, "world_size": self.world_size,
            "shard_done": shard_done, "shard_total": shard_total, "done_total": done_total, "total": total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if per_case is None else round(per_case * (shard_total - shard_done), 1),
            # the other ranks are assumed to go as fast as this one
            "eta_all_s": None if per_case is None else round(per_case * (total - done_total) / self.world_size, 1),
        }
        if self.mode == "json":
            print(json.dumps(record), file=self.stream, flush=True)
        elif self.mode == "bar":
            eta = "" if per_case is None else f", ETA {_clock(record['eta_s'])} (all ranks ~{_clock(record['eta_all_s'])})"
            print(f"[rank {self.rank}/{self.world_size}] {'made' if made else 'skipped (done)'} {case}: "
                  f"{shard_done}/{shard_total} of this shard, {done_total}/{total} overall, {_clock(elapsed)} elapsed{eta}",
                  file=self.stream, flush=True)
        return record


def _clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
