"""Progress reporting for long runs: JSON lines for machines (the Slicer module), a bar for people."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


class Progress:
    """A (step, total) callback that prints one JSON object per step or a one-line text bar."""

    def __init__(self, mode: str = "bar", stream: TextIO | None = None, label: str = "sampling") -> None:
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"progress mode {mode!r} must be bar, json or none")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.label = label
        self.start = time.perf_counter()

    def __call__(self, step: int, total: int) -> None:
        """Report that step of total is done."""
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (total - step) if step else None
        if self.mode == "json":
            record = {"step": step, "total": total, "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 3)}
            print(json.dumps(record), file=self.stream, flush=True)
        elif self.mode == "bar":
            width = 30
            filled = int(width * step / total)
            eta_text = f"{eta:6.0f} s left" if eta is not None else ""
            end = "\n" if step == total else ""
            print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {step}/{total} {elapsed:6.0f} s {eta_text}",
                  end=end, file=self.stream, flush=True)
