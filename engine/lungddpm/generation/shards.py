"""The work list of a batch generation: which (reference, variant, seed) cases exist and which rank makes each.

Every rank builds the same sorted list from the same inputs and takes ``items[rank::world_size]``, so
the shards of all ranks cover every case exactly once with no communication between them. The rank
comes from ``--shard i/n`` or from the variables torchrun (and most launchers) set: RANK, WORLD_SIZE
and LOCAL_RANK (the GPU of this process on its machine).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import torch

from lungddpm.errors import ConfigError

CASE_PREFIX = "LUNGSYN"  # every generated case name starts with this: the case is synthetic


@dataclass(frozen=True)
class WorkItem:
    """One synthetic case: its reference, variant number and the seed its noise and nodules are drawn from."""

    reference_id: str
    variant: int
    seed: int

    @property
    def case(self) -> str:
        """The case name, marked synthetic: LUNGSYN_<reference>_v<variant>."""
        return f"{CASE_PREFIX}_{self.reference_id}_v{self.variant:03d}"


@dataclass(frozen=True)
class Shard:
    """This process's place among all processes: rank in [0, world_size) and its GPU index on the machine."""

    rank: int
    world_size: int
    local_rank: int = 0


def safe_id(text: str) -> str:
    """A reference id usable in file names: letters, digits and '-' only (other runs of characters become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")
    if not cleaned:
        raise ConfigError(f"reference id {text!r} has no letters or digits; give each reference an id such as 'A0001'")
    return cleaned


def variant_seed(base_seed: int, reference_id: str, variant: int) -> int:
    """A 31-bit seed fixed by (base seed, reference id, variant): stable when other references are added or removed."""
    digest = hashlib.sha256(f"{base_seed}:{reference_id}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def work_items(reference_ids: list[str], variants: int, base_seed: int = 0) -> list[WorkItem]:
    """All cases, sorted by reference id then variant; refuses duplicate ids (two references would share names)."""
    if variants < 1:
        raise ConfigError(f"variants={variants}: give at least 1 variant per reference")
    duplicates = sorted({r for r in reference_ids if reference_ids.count(r) > 1})
    if duplicates:
        raise ConfigError(f"reference ids {duplicates} occur more than once; give every reference a distinct id")
    return [WorkItem(r, k, variant_seed(base_seed, r, k)) for r in sorted(reference_ids) for k in range(variants)]


def shard_items(items: list[WorkItem], shard: Shard) -> list[WorkItem]:
    """This rank's share: every world_size-th item starting at rank."""
    return items[shard.rank :: shard.world_size]


def parse_shard(text: str) -> Shard:
    """'i/n' (0-based rank i of n) as a Shard."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r} must look like i/n, e.g. 0/4 for the first of four shards")
    return _checked(int(match.group(1)), int(match.group(2)), 0)


def shard_from_env(environ: dict[str, str] | None = None) -> Shard:
    """The Shard from torchrun's RANK, WORLD_SIZE and LOCAL_RANK; rank 0 of 1 when they are not set."""
    env = os.environ if environ is None else environ
    try:
        rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", 0))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    return _checked(rank, world, local)


def _checked(rank: int, world: int, local: int) -> Shard:
    """A Shard after checking 0 <= rank < world."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard rank {rank} of world size {world} is impossible; ranks run from 0 to world size - 1")
    return Shard(rank, world, local)


def shard_device(requested: str, shard: Shard) -> str:
    """The device of this rank: with 'auto' or 'cuda' and CUDA present, GPU LOCAL_RANK of this machine."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{shard.local_rank}"
    return requested
