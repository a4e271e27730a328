"""Atomic outputs: each file is written under a hidden temporary name, flushed to disk, then renamed into place.

A reader never sees half a file, and a failed or interrupted write leaves nothing: the temporary
``.<name>.tmp-<8 hex digits><extension>`` sits beside its target (same extension, so SimpleITK picks
the right writer; same file system, so ``os.replace`` is atomic) and is removed on any error,
KeyboardInterrupt included. Files written inside ``outputs_together()`` are renamed when the block
ends, all of them or none (an image and its labels). SIGINT and SIGTERM that arrive during the
renames are handled once they are done. A full disk raises OutputError "no space left on <folder>".

Only SIGKILL (or a power cut) can leave a temporary behind; it is hidden, ``is_temporary`` names it,
and ``remove_temporaries`` deletes such leftovers where a command knows nobody else is writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from lungddpm.errors import OutputError

# A write that failed with less free space than this left failed for lack of space: torch.save and ITK's
# writers lose the errno (writers that report success after a short write are caught by reading back).
FULL_BYTES = 1 << 20
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-[0-9a-f]{8}(?P<extension>.*)")


@dataclass
class _Pending:
    """A written and flushed temporary waiting to become its target, and the folders made for it."""

    temporary: Path
    target: Path
    made_folders: list[Path] = field(default_factory=list)


@dataclass
class _Group:
    """The files of one outputs_together block, and where their temporaries go (None: beside each target)."""

    folder: Path | None
    pending: list[_Pending] = field(default_factory=list)


_GROUP: ContextVar[_Group | None] = ContextVar("lungddpm_outputs_together", default=None)


def _extension(path: Path) -> str:
    """The file extension as written, .nii.gz counted as one; '' when the name has none."""
    return path.name[-7:] if path.name.lower().endswith(".nii.gz") else path.suffix


def _temporary_path(target: Path, folder: Path) -> Path:
    """A new hidden name in folder for target's content while it is written."""
    return folder / f".{target.name}.tmp-{secrets.token_hex(4)}{_extension(target)}"


def is_temporary(path: Path) -> bool:
    """Whether a file is an atomic_output temporary (a write that never finished, if its writer is gone)."""
    match = _TEMPORARY.fullmatch(path.name)
    return bool(match) and match["name"].endswith(match["extension"])


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """A temporary path to write target's content to; it becomes target when the block ends without error.

    Inside outputs_together() it becomes target when that block ends, together with the block's other files.
    """
    target = Path(target)
    group = _GROUP.get()
    folder = group.folder if group and group.folder else target.parent
    made = _make_folder(target.parent) + (_make_folder(folder) if folder != target.parent else [])
    pending = _Pending(_temporary_path(target, folder), target, made)
    try:
        yield pending.temporary
        _flush(pending.temporary)
    except BaseException as error:
        full = _out_of_space(error, folder)
        _discard([pending])
        if full:
            raise OutputError(_no_space_message(target)) from error
        raise
    if group is None:
        _place([pending])
    else:
        group.pending.append(pending)


@contextlib.contextmanager
def outputs_together(folder: Path | None = None) -> Iterator[None]:
    """The files written with atomic_output in the block appear together when it ends, or none of them does.

    Nested in another such block, the files join the enclosing block's when this one ends without error.
    `folder`: where their temporaries go instead of beside each target, on the same file system (a hidden
    staging folder, for folders that other programs list while files are being written).
    """
    parent = _GROUP.get()
    group = _Group(folder or (parent.folder if parent else None))
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        _discard(group.pending)
        raise
    finally:
        _GROUP.reset(token)
    if parent is None:
        _place(group.pending)
    else:
        parent.pending.extend(group.pending)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically, without newline translation."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def _no_space_message(target: Path) -> str:
    """The one-line error of a write that ran out of disk space."""
    return (f"no space left on {os.path.abspath(target.parent)}: {target.name} was not written; "
            "free some space there or choose an output folder on another disk")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that killed writers left in folder and below; only where no one else writes now."""
    stale = [p for p in folder.rglob(".*") if p.is_file() and is_temporary(p)] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _make_folder(folder: Path) -> list[Path]:
    """Create folder with its parents; returns the folders that did not exist, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _flush(temporary: Path) -> None:
    """Force a written temporary to disk."""
    fd = os.open(temporary, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for lack of disk space (told by errno, or by the space left)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, Exception):  # KeyboardInterrupt and other interruptions
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_BYTES  # writers such as torch.save and ITK lose the errno
    except OSError:
        return False


def _discard(pending: list[_Pending]) -> None:
    """Remove temporaries and the folders made for them (those left empty)."""
    for item in pending:
        item.temporary.unlink(missing_ok=True)
    made = {folder for item in pending for folder in item.made_folders}
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError):  # a folder that is not empty stays
            folder.rmdir()


def _place(pending: list[_Pending]) -> None:
    """Rename every temporary onto its target with SIGINT/SIGTERM deferred; on failure remove what was placed."""
    placed: list[Path] = []
    with _signals_deferred():
        try:
            for item in pending:
                os.replace(item.temporary, item.target)
                placed.append(item.target)
        except BaseException:
            for target in placed:
                target.unlink(missing_ok=True)
            _discard(pending)
            raise
        for folder in {item.target.parent for item in pending}:
            _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the renames) to disk where the system allows it (not on Windows)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder; the renames are done either way
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block are handled as usual when it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(received):
            signal.raise_signal(s)
