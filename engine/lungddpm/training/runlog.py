"""Training logs: one JSON object per line in ``log.jsonl`` and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lungddpm.errors import ConfigError
from lungddpm.io.atomic import write_text


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak GPU memory allocated by torch on a CUDA device, and this process's peak resident memory, in MiB."""
    out = {}
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out["peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    return out


class RunLog:
    """Appends records to output/log.jsonl and writes their numbers to TensorBoard (output/tensorboard).

    A run resumed from step s first drops the records after s (steps the crashed run did not save),
    in the JSON-lines file and, through purge_step, in TensorBoard.
    """

    def __init__(self, output: str | Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(output) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_log(output) if r["step"] <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("TensorBoard logging needs the tensorboard package: pip install 'lungddpm[train]', "
                                  "or set tensorboard = false") from None
            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(str(Path(output) / "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any], group: str = "train") -> None:
        """Append one record (it must hold 'step'); numeric fields also go to TensorBoard as <group>/<name>."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{group}/{key}", value, record["step"])

    def close(self) -> None:
        """Flush and close TensorBoard's event file."""
        if self.writer is not None:
            self.writer.close()


def read_log(output: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl."""
    path = Path(output) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
