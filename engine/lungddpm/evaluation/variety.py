"""Variety: how different the K synthetic variants of one reference are from each other, inside the lung.

For the variants of one reference made with one guidance scale, the mean over all pairs (a, b) of the mean
|HU_a − HU_b| over the voxels both layouts call lung or nodule (label ≥ 1): 0 when repeated sampling gives the
same image, larger the more the variants differ. Cases of one reference come together (cases are sorted by
name), so ``VarietyGroups`` holds only the current reference's variants in memory.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from itertools import combinations

import numpy as np

from lungddpm.layout.labels import LUNG


def mean_pairwise_difference(images: Sequence[np.ndarray], layouts: Sequence[np.ndarray]) -> float:
    """Mean over pairs of the mean |ΔHU| over the voxels where both layouts are ≥ 1; NaN for fewer than two images."""
    differences = []
    for (a, la), (b, lb) in combinations(zip(images, layouts), 2):
        both = (la >= LUNG) & (lb >= LUNG)
        differences.append(float(np.abs(a[both].astype(np.float64) - b[both]).mean()))
    return float(np.mean(differences)) if differences else math.nan


class VarietyGroups:
    """Collects cases by (reference, group key) and computes each group's variety when its reference is done."""

    def __init__(self) -> None:
        self.reference: str | None = None
        self.pending: dict[Hashable, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.groups: list[dict] = []

    def add(self, reference_id: str, key: Hashable, image: np.ndarray, layout: np.ndarray) -> None:
        """One case's synthetic HU array and layout; a new reference closes the previous one's groups."""
        if reference_id != self.reference:
            self._close()
            self.reference = reference_id
        self.pending.setdefault(key, []).append((image, layout))

    def _close(self) -> None:
        """Compute the variety of the current reference's groups of two or more variants."""
        for key, cases in self.pending.items():
            if len(cases) >= 2:
                images, layouts = zip(*cases)
                self.groups.append({"reference_id": self.reference, "key": key, "variants": len(cases),
                                    "mean_abs_diff_hu": mean_pairwise_difference(images, layouts)})
        self.pending = {}

    def finish(self) -> list[dict]:
        """Every group's variety (reference_id, key, variants, mean_abs_diff_hu)."""
        self._close()
        return self.groups
