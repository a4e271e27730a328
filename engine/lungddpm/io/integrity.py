"""Proof that an input image is complete and finite: it is read completely or refused.

ITK reads some damaged inputs without a word: a cut ``.nii.gz`` (the missing voxels become 0), a corrupt
zlib stream in MHA, NaN in NIfTI float data (niftilib sets them to 0), a DICOM series with a slice
missing or a slice file cut short (GDCM leaves the file out; the rest is read at a uniform, wrong
spacing). So before ITK reads a file, ``verify_file`` checks its container: the voxel bytes the header
describes against the bytes there are (in the detached data file of ``.nhdr`` / ``.mhd``), gzip and zlib
streams inflated to their end with their checksum and length (streamed a chunk at a time: never a
second copy of the image), NaN/Inf in NIfTI float data counted on the way. After reading,
``nonfinite_count`` / ``require_finite`` refuse NaN/Inf in every format, and for a DICOM series
``verify_slice_files`` and ``verify_slice_positions`` refuse unreadable slice files and missing,
duplicated or unevenly spaced slices. Every refusal is an InputError of one line naming the file and
the fix.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from lungddpm.errors import InputError, SeriesError

CHUNK = 1 << 20  # bytes read, and at most inflated, at a time
GZIP_MAGIC = b"\x1f\x8b"
ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # inflate either wrapper, checking its CRC-32 / Adler-32 and length
NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes whose NaN/Inf niftilib turns into 0
NIFTI_HEADER_BYTES = 540  # a NIfTI-2 header; NIfTI-1 uses the first 348
MAX_HEADER_LINES = 1000  # NRRD and MetaImage text headers are a few dozen lines
SLICE_GAP_TOLERANCE = 0.1  # relative deviation of a slice gap from the median gap that counts as uneven
DUPLICATE_MM = 0.01  # slices closer than this along the slice normal are one slice stored twice
POSITION, ORIENTATION = "0020|0032", "0020|0037"  # DICOM Image Position / Orientation (Patient)
DICM_OFFSET = 128  # a DICOM Part-10 file holds "DICM" after a 128-byte preamble
IMAGE_TAGS = (b"\x20\x00\x32\x00", b"\xe0\x7f\x10\x00")  # (0020,0032), (7FE0,0010) little endian: an image slice
DICOMDIR_UID, META_BYTES = b"1.2.840.10008.1.3.10", 1024  # a DICOMDIR's media storage class, in its file meta group
_RECOPY = "copy or export the file again"


def verify_file(path: Path) -> None:
    """Refuse an NRRD, NIfTI or MetaImage file whose voxel data are cut short, corrupt or (NIfTI) not finite."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _verify_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _verify_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _verify_metaimage(path)


def nonfinite_count(values: np.ndarray) -> int:
    """How many values are NaN or ±Inf (0 for an integer array)."""
    return int(np.count_nonzero(~np.isfinite(values))) if np.issubdtype(values.dtype, np.floating) else 0


def require_finite(name: str, count: int) -> None:
    """Raise InputError when `count` voxels of the image `name` are NaN or infinite."""
    if count:
        raise InputError(f"{name}: {count} voxels are NaN or infinite; give a CT with finite HU values "
                         f"(replace them, e.g. with -1024 HU for air)")


def _file_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The rest of a file, a chunk at a time."""
    while chunk := stream.read(CHUNK):
        yield chunk


def _inflated(stream: BinaryIO, path: Path) -> Iterator[bytes]:
    """The rest of a file inflated from gzip (several members in a row included) or zlib, a chunk at a time."""
    inflater, pending = zlib.decompressobj(ZLIB_OR_GZIP), b""
    try:
        while pending or (pending := stream.read(CHUNK)):
            if inflater.eof:
                pending += stream.read(len(GZIP_MAGIC))
                if not pending.startswith(GZIP_MAGIC):
                    return  # bytes after the stream that do not start a gzip member are not voxel data (as zlib's gzread)
                inflater = zlib.decompressobj(ZLIB_OR_GZIP)
            yield inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail or inflater.unused_data
        yield inflater.flush()  # output still held back by the CHUNK limit
    except zlib.error as error:
        raise InputError(f"{path}: the compressed voxel data are corrupt ({error}); {_RECOPY}") from None
    if not inflater.eof:
        raise InputError(f"{path}: the compressed voxel data end early (the file is truncated); {_RECOPY}")


def _scan(chunks: Iterable[bytes], start: int, length: int, dtype: np.dtype | None) -> tuple[int, int]:
    """(bytes in the chunks, NaN/Inf values among bytes [start, start + length) read as dtype; 0 for dtype None)."""
    total, bad, carry = 0, 0, b""
    for chunk in chunks:
        low, high = max(start - total, 0), min(start + length - total, len(chunk))
        if dtype is not None and high > low:
            data = carry + chunk[low:high]
            whole = len(data) - len(data) % dtype.itemsize
            bad += nonfinite_count(np.frombuffer(data, dtype, whole // dtype.itemsize))
            carry = data[whole:]
        total += len(chunk)
    return total, bad


def _require_bytes(path: Path, data_file: Path, needed: int, found: int) -> None:
    """Raise InputError when the data hold fewer bytes than the header describes."""
    if found < needed:
        holder = "the file holds" if data_file == path else f"its data file {data_file.name} holds"
        raise InputError(f"{path}: the header describes {needed} bytes of voxel data, but {holder} {max(found, 0)}; "
                         f"the data are incomplete: {_RECOPY} (or correct the header)")


def _verify_nifti(path: Path) -> None:
    """Check a .nii / .nii.gz: gzip stream, voxel bytes against the header, NaN/Inf in float data."""
    with open(path, "rb") as stream:
        compressed = stream.read(len(GZIP_MAGIC)) == GZIP_MAGIC  # niftilib also reads a .nii.gz that is not gzipped
        stream.seek(0)
        chunks = _inflated(stream, path) if compressed else _file_chunks(stream)
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= NIFTI_HEADER_BYTES:
                break
        offset, length, dtype = _nifti_layout(head)
        if compressed or dtype is not None:
            total, bad = _scan(chain([head], chunks), offset, length, dtype)
        else:
            total, bad = path.stat().st_size, 0
    _require_bytes(path, path, length, total - offset)
    require_finite(str(path), bad)


def _nifti_layout(head: bytes) -> tuple[int, int, np.dtype | None]:
    """(voxel offset, voxel bytes, float dtype or None) from a NIfTI-1/-2 header; (0, 0, None) if it is none (ITK says why)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(f"{order}i", head)[0] == 348:
            dims, (datatype, bitpix), offset = (struct.unpack_from(f"{order}8h", head, 40),
                                                struct.unpack_from(f"{order}2h", head, 70),
                                                struct.unpack_from(f"{order}f", head, 108)[0])
        elif len(head) >= 540 and struct.unpack_from(f"{order}i", head)[0] == 540:
            dims, (datatype, bitpix), offset = (struct.unpack_from(f"{order}8q", head, 16),
                                                struct.unpack_from(f"{order}2h", head, 12),
                                                struct.unpack_from(f"{order}q", head, 168)[0])
        else:
            continue
        if not 0 <= offset < np.inf:
            break
        count = int(np.prod([max(d, 0) for d in dims[1:1 + min(max(dims[0], 0), 7)]]))
        dtype = np.dtype(order + NIFTI_FLOATS[datatype]) if datatype in NIFTI_FLOATS else None
        return int(offset), count * max(bitpix, 0) // 8, dtype
    return 0, 0, None


def _header_fields(stream: BinaryIO, separator: str, last_key: str = "") -> dict[str, str]:
    """Lower-case keys and values of a text header, up to an empty line, the end or the line of last_key."""
    fields = {}
    for _ in range(MAX_HEADER_LINES):
        line = stream.readline(CHUNK).decode("latin-1").strip()
        key, found, value = line.partition(separator)
        if not line:
            break
        if found:
            fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == last_key:
            break
    return fields


def _header_bytes(path: Path) -> int | None:
    """The voxel bytes an NRRD or MetaImage header describes, as ITK reads it; None when ITK cannot say."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        pixel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    except RuntimeError:
        return None  # the read that follows reports ITK's reason
    return int(np.prod(reader.GetSize())) * sitk.GetArrayViewFromImage(pixel).nbytes


def _verify_data(path: Path, data_file: str, start: int, skip: int, compressed: bool) -> None:
    """Check the voxel data of an NRRD / MetaImage header: in `path` from byte start (LOCAL) or in data_file."""
    needed = _header_bytes(path)
    if needed is None or len(data_file.split()) != 1 or data_file.upper() == "LIST" or "%" in data_file:
        return  # ITK refuses the header, or the voxels are split over several files
    source = path if data_file.upper() == "LOCAL" else path.parent / data_file
    if not source.is_file():
        raise InputError(f"{path}: its data file {source.name} (named in the header) is missing; "
                         f"put it beside the header")
    with open(source, "rb") as stream:
        stream.seek(start)
        found = _scan(_inflated(stream, source), 0, 0, None)[0] if compressed else source.stat().st_size - start
    _require_bytes(path, source, needed + max(skip, 0), found)


def _verify_nrrd(path: Path) -> None:
    """Check an NRRD (.nrrd, or .nhdr with a detached data file): raw size or gzip stream against the header."""
    with open(path, "rb") as stream:
        if not stream.read(4) == b"NRRD":
            return
        fields = _header_fields(stream, ":")
        start = stream.tell()
    encoding = fields.get("encoding", "")
    if encoding not in ("raw", "gzip", "gz"):
        return  # text encodings, and bzip2, which this ITK does not read
    data_file = fields.get("data file", fields.get("datafile", "LOCAL"))
    skip = _whole_number(fields.get("byte skip", fields.get("byteskip", "0")))
    _verify_data(path, data_file, start if data_file == "LOCAL" else 0, skip, encoding != "raw")


def _verify_metaimage(path: Path) -> None:
    """Check a MetaImage (.mha, or .mhd with a detached data file): raw size or zlib stream against the header."""
    with open(path, "rb") as stream:
        fields = _header_fields(stream, "=", last_key="elementdatafile")
        start = stream.tell()
    data_file = fields.get("elementdatafile", "")
    if not data_file or fields.get("binarydata", "true").lower() != "true":
        return
    start = start if data_file.upper() == "LOCAL" else max(_whole_number(fields.get("headersize", "0")), 0)
    _verify_data(path, data_file, start, 0, fields.get("compresseddata", "").lower() == "true")


def _whole_number(text: str) -> int:
    """An integer header value; 0 when it is none (ITK judges the header)."""
    try:
        return int(text)
    except ValueError:
        return 0


def verify_slice_files(folder: Path, series: Sequence[Sequence[str]]) -> None:
    """Refuse a folder holding a DICOM image file that no series takes: GDCM leaves out files it cannot parse."""
    taken = {Path(name).name for files in series for name in files}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.name not in taken and _is_damaged_slice(entry):
            raise SeriesError(folder, f"unreadable slice file {entry.name} (truncated or damaged)",
                              "replace it with an intact copy from the original export")


def _is_damaged_slice(path: Path) -> bool:
    """Whether a file is a DICOM image (Part-10 preamble, a slice position or pixel data; no DICOMDIR) that ITK cannot read."""
    with open(path, "rb") as stream:
        data = stream.read(DICM_OFFSET + 4)
        if data[DICM_OFFSET:] != b"DICM":
            return False
        data += stream.read()
    if DICOMDIR_UID in data[:META_BYTES] or not any(tag in data for tag in IMAGE_TAGS):
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return True
    return False


def verify_slice_positions(folder: Path, files: Sequence[str], reader: sitk.ImageSeriesReader) -> None:
    """Refuse a series read by `reader` (MetaDataDictionaryArrayUpdateOn) whose slices are duplicated, missing or unevenly spaced.

    Positions are along the slice normal (z for an axial series); slices are counted from 0 in that order.
    """
    if len(files) < 2:
        return
    names = [Path(name).name for name in files]
    positions = [_tag_numbers(reader, i, POSITION, 3) for i in range(len(names))]
    orientations = [_tag_numbers(reader, i, ORIENTATION, 6) for i in range(len(names))]
    unplaced = [n for n, p, o in zip(names, positions, orientations) if p is None or o is None]
    if unplaced:
        raise SeriesError(folder, f"slice file {unplaced[0]} has no valid Image Position/Orientation (Patient), so "
                                  f"the slice spacing is unknown", "export the series with its slice positions")
    along = [position @ np.cross(orientations[0][:3], orientations[0][3:]) for position in positions]
    order = np.argsort(along, kind="stable")
    z, names = np.asarray(along)[order], [names[i] for i in order]
    gaps = np.diff(z)

    def at(k: int) -> str:
        return f"slice {k} ({names[k]}, z = {z[k]:.2f} mm)"

    twice = np.flatnonzero(gaps <= DUPLICATE_MM)
    if twice.size:
        raise SeriesError(folder, f"duplicated slices: {at(twice[0])} and {at(twice[0] + 1)} are at the same position"
                                  f"{_more(twice)}", "remove the duplicate slice files")
    median = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median)
    if uneven.size:
        kind, fix = (("missing slices", "add the missing slice files or export the complete series again")
                     if np.all(gaps[uneven] > median) else
                     ("unevenly spaced slices", "export the series again with even slice spacing"))
        k = uneven[0]
        raise SeriesError(folder, f"{kind}: slice gaps range {gaps.min():.2f}..{gaps.max():.2f} mm (median {median:.2f} mm); "
                                  f"a {gaps[k]:.2f} mm gap between {at(k)} and {at(k + 1)}{_more(uneven)}", fix)


def _tag_numbers(reader: sitk.ImageSeriesReader, index: int, tag: str, size: int) -> np.ndarray | None:
    """The `size` numbers of a slice's multi-valued decimal tag (e.g. '-228.0\\-93.1\\-439'); None if absent or malformed."""
    try:
        numbers = np.array([float(v) for v in reader.GetMetaData(index, tag).split("\\")])
    except (RuntimeError, ValueError):
        return None
    return numbers if numbers.shape == (size,) and np.isfinite(numbers).all() else None


def _more(where: np.ndarray) -> str:
    """', and N more' for the places after the first."""
    return f", and {where.size - 1} more" if where.size > 1 else ""
