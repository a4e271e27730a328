"""Loaded models kept between syntheses of one process (the `lungddpm worker` behind Slicer's panel).

A model is loaded once per (file, size, modification time, device); a changed or replaced file is loaded again.
"""

from __future__ import annotations

from pathlib import Path

from lungddpm.model.checkpoints import load_model
from lungddpm.model.lungddpm import LungDDPM


class ModelCache:
    """The models loaded so far, by checkpoint file version and device."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int, int, str], LungDDPM] = {}
        self.loads = 0  # how many times a file was actually read (for reports and tests)

    def get(self, path: str | Path, device: str) -> LungDDPM:
        """The model of a checkpoint file on a device, loaded on first use."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_size, stat.st_mtime_ns, device)
        if key not in self._models:
            self._models = {k: m for k, m in self._models.items() if k[0] != key[0]}  # an older version of the file
            self._models[key] = load_model(resolved, device=device)
            self.loads += 1
        return self._models[key]
