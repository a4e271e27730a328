"""Damaged inputs are refused when read (lungddpm.io.integrity): cut or corrupt compressed data, short data files,
NaN/Inf voxels, incomplete DICOM series; the CLI prints one error line and writes nothing. Valid files still read."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import copy_series
from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, read_volume, write_volume

SHAPE_KJI = (12, 20, 24)
VOXEL_BYTES = int(np.prod(SHAPE_KJI)) * 2  # int16


def _hu(dtype=np.int16) -> np.ndarray:
    """Noise-like HU (k, j, i) that deflate cannot shrink much, so that a cut lands inside the voxel data."""
    return np.random.default_rng(0).integers(-1000, 1000, SHAPE_KJI).astype(dtype)


def _nifti(path: Path, array_kji: np.ndarray) -> Path:
    """A NIfTI written by nibabel (an independent writer), voxel (i, j, k) = array[k, j, i]."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_kji.transpose(2, 1, 0)), np.diag([-0.8, -0.8, 2.5, 1.0])), path)
    return path


def _cut(path: Path, fraction: float) -> Path:
    """Keep the first `fraction` of a file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def _flip(path: Path, position: int) -> Path:
    """Invert one byte of a file (negative positions count from the end)."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _with_inf(path: Path) -> Path:
    """A float32 image with 3 non-finite voxels (NaN, +Inf, -Inf), written by SimpleITK (write_volume refuses them)."""
    array = _hu(np.float32)
    array[1, 2, 3], array[4, 5, 6], array[7, 8, 9] = np.nan, np.inf, -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    return path


def _detached_short(folder: Path, suffix: str) -> Path:
    """A .nhdr / .mhd header written by SimpleITK whose .raw data file lost its last 40 % of bytes."""
    header = folder / f"ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_hu()), str(header), useCompression=False)
    _cut(folder / "ct.raw", 0.6)
    return header


def _move_slice(path: Path, old_z: bytes, new_z: bytes) -> Path:
    """Rewrite the z of a slice's Image Position (Patient) in place (same length keeps the DICOM element valid)."""
    data = path.read_bytes()
    assert len(old_z) == len(new_z) and data.count(b"\\" + old_z) == 1
    path.write_bytes(data.replace(b"\\" + old_z, b"\\" + new_z))
    return path


# Slice 1-31.dcm lies at z = -274 mm, slice 33 of 64 in position order, between 1-32.dcm (-279) and 1-30.dcm (-269).
FILE_FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nii.gz cut to 60 %": (lambda d: _cut(_nifti(d / "ct.nii.gz", _hu()), 0.6),
                           r"ct\.nii\.gz: the compressed voxel data end early \(the file is truncated\)"),
    "gzip CRC byte flipped": (lambda d: _flip(_nifti(d / "ct.nii.gz", _hu()), -8),
                              r"ct\.nii\.gz: the compressed voxel data are corrupt \(.*incorrect data check\)"),
    "gzip data byte flipped": (lambda d: _flip(_nifti(d / "ct.nii.gz", _hu()), 2000),
                               r"ct\.nii\.gz: the compressed voxel data are corrupt"),
    "nii cut to 60 %": (lambda d: _cut(_nifti(d / "ct.nii", _hu()), 0.6),
                        rf"ct\.nii: the header describes {VOXEL_BYTES} bytes of voxel data, but the file holds \d+;"),
    "NaN NIfTI": (lambda d: _nifti(d / "ct.nii.gz", np.where(_hu() > 990, np.nan, _hu()).astype(np.float32)),
                  rf"ct\.nii\.gz: {int((_hu() > 990).sum())} voxels are NaN or infinite; give a CT with finite HU"),
    "Inf NRRD": (lambda d: _with_inf(d / "ct.nrrd"), r"ct\.nrrd: 3 voxels are NaN or infinite"),
    "Inf MHA": (lambda d: _with_inf(d / "ct.mha"), r"ct\.mha: 3 voxels are NaN or infinite"),
    "NRRD gzip cut to 60 %": (lambda d: _cut(write_volume(Volume(_hu()), d / "ct.nrrd"), 0.6),
                              r"ct\.nrrd: the compressed voxel data end early"),
    "MHA zlib checksum flipped": (lambda d: _flip(write_volume(Volume(_hu()), d / "ct.mha"), -1),
                                  r"ct\.mha: the compressed voxel data are corrupt \(.*incorrect data check\)"),
    ".nhdr with a short .raw": (lambda d: _detached_short(d, ".nhdr"),
                                rf"ct\.nhdr: the header describes {VOXEL_BYTES} bytes of voxel data, but its data "
                                rf"file ct\.raw holds {int(VOXEL_BYTES * 0.6)}; the data are incomplete"),
    ".mhd with a short .raw": (lambda d: _detached_short(d, ".mhd"),
                               rf"ct\.mhd: the header describes {VOXEL_BYTES} bytes of voxel data, but its data "
                               rf"file ct\.raw holds {int(VOXEL_BYTES * 0.6)}; the data are incomplete"),
}
SERIES_FAULTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "slice removed": (lambda s: (s / "1-31.dcm").unlink(),
                      r"dicom: missing slices: slice gaps range 5\.00\.\.10\.00 mm \(median 5\.00 mm\); a 10\.00 mm gap "
                      r"between slice 32 \(1-32\.dcm, z = -279\.00 mm\) and slice 33 \(1-30\.dcm, z = -269\.00 mm\); "
                      r"add the missing slice files"),
    "slice duplicated": (lambda s: shutil.copyfile(s / "1-31.dcm", s / "1-31-copy.dcm"),
                         r"dicom: duplicated slices: slice 33 \(1-31(-copy)?\.dcm, z = -274\.00 mm\) and slice 34 "
                         r"\(1-31(-copy)?\.dcm, z = -274\.00 mm\) are at the same position; remove the duplicate"),
    "slice file truncated": (lambda s: _cut(s / "1-31.dcm", 0.5),
                             r"dicom: unreadable slice file 1-31\.dcm \(truncated or damaged\); replace it"),
    "slice moved": (lambda s: _move_slice(s / "1-31.dcm", b"-274", b"-276"),
                    r"dicom: unevenly spaced slices: slice gaps range 3\.00\.\.7\.00 mm \(median 5\.00 mm\); a 3\.00 mm "
                    r"gap between slice 32 \(1-32\.dcm, z = -279\.00 mm\) and slice 33 \(1-31\.dcm, z = -276\.00 mm\)"),
}


def _damaged(kind: str, tmp_path: Path, real_ct_dir: Path | None) -> tuple[Path, str]:
    """(the damaged input made in tmp_path, the pattern its error message must match)."""
    if kind in FILE_FAULTS:
        make, pattern = FILE_FAULTS[kind]
        return make(tmp_path), pattern
    if real_ct_dir is None:
        pytest.skip("needs the real CT")
    damage, pattern = SERIES_FAULTS[kind]
    series = copy_series(real_ct_dir, tmp_path / "dicom")
    damage(series)
    return series, pattern


@pytest.fixture
def ct_dir(request) -> Path | None:
    """The real CT folder for the DICOM faults only (file faults need no shared data)."""
    return request.getfixturevalue("real_ct_dir") if request.node.callspec.params["kind"] in SERIES_FAULTS else None


@pytest.mark.parametrize("kind", [*FILE_FAULTS, *SERIES_FAULTS])
def test_damaged_input_is_refused_in_one_line_naming_it(kind: str, tmp_path: Path, ct_dir: Path | None) -> None:
    path, pattern = _damaged(kind, tmp_path, ct_dir)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(InputError, match=pattern) as caught:
        read_volume(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(path))
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before  # input untouched


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungddpm", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", [*FILE_FAULTS, *SERIES_FAULTS])
def test_cli_refuses_damaged_input_with_one_error_line(kind: str, tmp_path: Path, ct_dir: Path | None,
                                                       shared_dir: Path) -> None:
    (tmp_path / "in").mkdir()
    path, _ = _damaged(kind, tmp_path / "in", ct_dir)
    layout = shared_dir / "data" / "lung-pet-ct-dx-A0001" / "layout-crude.nii.gz"
    out = tmp_path / "out"
    for command in (["lung-mask", path, "--output", out / "mask.nrrd"],
                    ["synthesize", "--reference", path, "--layout", layout, "--model", "demo", "--output", out / "s.nrrd",
                     "--device", "cpu", "--threads", "1"]):
        result = _run(*command)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lungddpm: error: {path}: "), result.stderr
        assert result.stdout == "" and not out.exists()


def test_valid_variants_read_bit_identically(tmp_path: Path) -> None:
    hu = _hu()
    plain = _nifti(tmp_path / "plain.nii", hu)
    data = plain.read_bytes()
    half = len(data) // 2
    members = tmp_path / "members.nii.gz"  # two gzip members in a row, then zero padding: gunzip and ITK read it
    members.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]) + bytes(16))
    uncompressed = tmp_path / "plain-bytes.nii.gz"  # niftilib reads a .nii.gz that is not gzipped
    uncompressed.write_bytes(data)
    zeros = _nifti(tmp_path / "zeros.nii.gz", np.zeros((64, 96, 96), np.int16))  # inflates ~6000x: many CHUNK limits
    for path in (plain, members, uncompressed):
        np.testing.assert_array_equal(read_volume(path).array, hu)
    assert not read_volume(zeros).array.any()
    finite = hu.astype(np.float32)
    np.testing.assert_array_equal(read_volume(_nifti(tmp_path / "float.nii.gz", finite)).array, finite)
    header = tmp_path / "ok.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(header), useCompression=True)
    np.testing.assert_array_equal(read_volume(header).array, hu)


def test_series_beside_other_files_reads_as_before(real_ct_dir: Path, tmp_path: Path) -> None:
    series = copy_series(real_ct_dir, tmp_path / "dicom")
    (series / "README.txt").write_text("exported series\n")
    meta = b"\x02\x00\x02\x00UI\x14\x001.2.840.10008.1.3.10"  # (0002,0002) media storage class: DICOMDIR
    (series / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + meta + b"\x20\x00\x32\x00" + bytes(64))
    original, copy = read_volume(real_ct_dir / "dicom"), read_volume(series)
    np.testing.assert_array_equal(copy.array, original.array)
    assert (copy.origin, copy.spacing, copy.direction) == (original.origin, original.spacing, original.direction)
