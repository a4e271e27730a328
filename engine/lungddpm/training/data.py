"""Prepared training data and a data order that depends only on (seed, sample position).

A prepared folder (``lungddpm prepare``) holds ``manifest.json`` and, per case, model-space arrays
``x.npy`` (1, D, H, W) in [−1, 1] and ``cond.npy`` (C, D, H, W) in [−1, 1]. A model conditioned on
nodule attributes takes each sample's from its manifest record (``sample_attributes``): the attributes
of the sample's largest nodule (a patch cube: its own nodule, listed first; a full volume with several
nodules: the largest of them; none: every attribute unknown).

Samples are numbered by their *position* p in the run: step s, accumulation micro-step m and slot g
of the global batch (G = processes × per-process batch) give p = (s · accum + m) · G + g; process r
takes slots r·b … r·b + b − 1. Position p is case perm_e[p mod n] of epoch e = p div n, where perm_e
is a permutation seeded by (seed, e). The order therefore does not depend on the number of processes
(for the same global batch) and a resumed run continues it exactly from its step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lungddpm.model.conditioning import attribute_vector
from lungddpm.model.config import ModelConfig
from lungddpm.errors import ConfigError, InputError

MANIFEST = "manifest.json"


@dataclass
class CaseRecord:
    """One prepared case: where its arrays are and which split it belongs to."""

    case_id: str
    folder: Path
    split: str
    attributes: dict = field(default_factory=dict)  # the sample's nodule attributes (sample_attributes)


def read_manifest(path: str | Path) -> dict:
    """The manifest of a prepared folder (or of a manifest.json path)."""
    path = Path(path)
    manifest_path = path / MANIFEST if path.is_dir() else path
    if not manifest_path.is_file():
        raise InputError(f"{path}: no {MANIFEST} found; prepare the data first with `lungddpm prepare`")
    return json.loads(manifest_path.read_text())


def load_cases(sources: list[str], split: str = "train") -> tuple[list[CaseRecord], dict]:
    """The cases of a split from one or more prepared folders, and the model-space description they share."""
    if not sources:
        raise ConfigError("no training data given; set data = [\"PREPARED_FOLDER\"] or pass --data")
    cases, space = [], None
    for source in sources:
        manifest = read_manifest(source)
        root = Path(source) if Path(source).is_dir() else Path(source).parent
        if space is None:
            space = manifest["space"]
        elif manifest["space"] != space:
            raise InputError(f"{source} was prepared for {manifest['space']}, unlike {sources[0]} ({space}); "
                             "prepare all folders with the same --profile and --size")
        cases += [CaseRecord(c["case_id"], root / c["folder"], c["split"], sample_attributes(c))
                  for c in manifest["cases"] if c["split"] == split]
    if not cases:
        raise InputError(f"{sources}: no cases in the {split!r} split; check the manifest or prepare more cases")
    return cases, space


def sample_attributes(record: dict) -> dict:
    """The attributes a sample is conditioned on: its largest nodule's (by diameter; ties: the first listed), or none."""
    nodules = record.get("nodules") or []
    if not nodules:
        return {}
    largest = max(nodules, key=lambda n: n["attributes"].get("diameter_mm", 0.0))  # max keeps the first of equals
    return dict(largest["attributes"])


def check_space(space: dict, config: ModelConfig) -> None:
    """Raise ConfigError unless prepared data fit the model (profile, size, layout channels, patch spacing)."""
    want = {"profile": config.profile, "size": config.image_size, "cond_channels": config.cond_channels,
            "patch_spacing_mm": config.patch_spacing_mm}
    spacing = "" if config.patch_spacing_mm is None else f" --patch-spacing {config.patch_spacing_mm:g}"
    for key, value in want.items():
        if space.get(key) != value:
            raise ConfigError(f"the data were prepared with {key} = {space.get(key)!r} but the model needs {value!r}; "
                              f"run `lungddpm prepare --profile {config.profile} --size {config.image_size} "
                              f"--cond-channels {config.cond_channels}{spacing}` again")


class PreparedCases(Dataset):
    """Prepared cases read from disk; item (case index, position) -> (x (1,D,H,W), cond (C,D,H,W), attributes (A,), position).

    ``schema``: the model's attribute names (``ModelConfig.attributes``); attributes holds their codes, NaN unknown.
    """

    def __init__(self, cases: list[CaseRecord], schema: tuple[str, ...] = ()) -> None:
        self.cases = cases
        self.schema = schema

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        index, position = key
        case = self.cases[index]
        x = np.load(case.folder / "x.npy").astype(np.float32)
        cond = np.load(case.folder / "cond.npy").astype(np.float32)
        attributes = torch.tensor(attribute_vector(self.schema, case.attributes), dtype=torch.float32)
        return torch.from_numpy(x), torch.from_numpy(cond), attributes, position


class SampleOrder:
    """Case index of each sample position: a fresh permutation per epoch, seeded by (seed, epoch)."""

    def __init__(self, num_cases: int, seed: int) -> None:
        self.num_cases = num_cases
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_cases)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
            self._perm = torch.randperm(self.num_cases, generator=generator).tolist()
            self._epoch = epoch
        return self._perm[offset]


class RunSampler(Sampler):
    """Endless (case index, position) keys for one process, from a start step on."""

    def __init__(self, num_cases: int, seed: int, *, batch_size: int, grad_accum: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0) -> None:
        self.order = SampleOrder(num_cases, seed)
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def positions(self) -> Iterator[int]:
        """This process's sample positions in order."""
        b, g = self.batch_size, self.batch_size * self.world_size
        micro = self.start_step * self.grad_accum
        while True:
            base = micro * g + self.rank * b
            yield from range(base, base + b)
            micro += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.order(p), p) for p in self.positions())
