"""Output paths checked before any long work, so that a bad path fails in a second, not after the sampling.

A path passes when it has a writable extension (files), its folder exists or can be created (no file
in the way), the folder can be written, it is not an input, and the disk holds what will be written
(an estimate from the output size: voxels x bytes per voxel, uncompressed, an upper bound).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import SimpleITK as sitk

from lungddpm.errors import InputError
from lungddpm.io.volume import WRITABLE_SUFFIXES, _suffix, refuse_protected

MIB = 1 << 20


def check_output_file(path: str | Path, *, protect: Iterable[str | Path] = (), needed_bytes: int = 0,
                      suffixes: tuple[str, ...] = WRITABLE_SUFFIXES) -> Path:
    """The path, or InputError naming it and the fix: unknown extension, a folder, no writable folder, an input, no room."""
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise InputError(f"{path}: cannot write {_suffix(path) or 'a file without extension'!r}; "
                         f"use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name, e.g. {path / ('output' + suffixes[0])}")
    _check_place(path, path.parent, protect, needed_bytes)
    return path


def check_output_folder(path: str | Path, *, protect: Iterable[str | Path] = (), needed_bytes: int = 0) -> Path:
    """The folder path, or InputError naming it and the fix: a file, no writable parent, an input, no room."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder; give a folder path (it is created if missing)")
    _check_place(path, path, protect, needed_bytes)
    return path


def _check_place(path: Path, folder: Path, protect: Iterable[str | Path], needed_bytes: int) -> None:
    """Refuse an input, a folder that cannot be created or written, and a disk without room for needed_bytes."""
    refuse_protected(path, protect)
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        raise InputError(f"{path}: cannot create its folder because {existing} is a file; choose another output "
                         f"path, or move that file")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the one sure test of write access (root, read-only mounts)
            pass
    except OSError as error:
        raise InputError(f"{path}: cannot write in the folder {existing} ({error.strerror}); choose a folder you "
                         f"can write to") from None
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise InputError(f"{path}: needs up to {_mib(needed_bytes)} but {existing} has {_mib(free)} free; free some "
                         f"space or choose another folder")


def _mib(size: int) -> str:
    """A byte count in MiB, e.g. '12.5 MiB'."""
    return f"{size / MIB:.1f} MiB"


def image_bytes(path: str | Path) -> int:
    """The bytes of an image's voxels from its header alone (a DICOM folder: its files' total size)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return path.stat().st_size if path.is_file() else 0  # the image's own read names the problem later
    voxels = 1
    for n in reader.GetSize():
        voxels *= n
    component = sitk.Image([1, 1], reader.GetPixelID(), reader.GetNumberOfComponents()).GetSizeOfPixelComponent()
    return voxels * component * reader.GetNumberOfComponents()
