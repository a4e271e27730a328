"""A CT or label image: a numpy array indexed (k, j, i) plus its physical geometry (LPS, like ITK).

Also: reading (NRRD, NIfTI, MHA/MHD, DICOM series) and writing images, grid comparison, the mapping between
continuous (i, j, k) indices and LPS millimetres, and resampling onto a reference grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from lungddpm.errors import InputError, OutputError
from lungddpm.io.atomic import atomic_output
from lungddpm.io.integrity import nonfinite_count, require_finite, verify_file, verify_slice_files, verify_slice_positions


@dataclass
class Volume:
    """Voxel array indexed (k, j, i) with origin (mm), spacing (mm, i/j/k order) and a 3x3 direction (row-major), all LPS."""

    array: np.ndarray
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        self.origin = tuple(float(v) for v in self.origin)
        self.spacing = tuple(float(v) for v in self.spacing)
        self.direction = tuple(float(v) for v in np.asarray(self.direction, dtype=float).reshape(9))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Copy a SimpleITK image into a Volume."""
        return cls(sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(), image.GetDirection())

    def to_sitk(self) -> sitk.Image:
        """Copy this Volume into a SimpleITK image with the same geometry."""
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def to_sitk_geometry(self) -> sitk.Image:
        """An empty (uint8) SimpleITK image on this grid: a resampling target or index maths, without the voxels."""
        image = sitk.Image([int(n) for n in self.array.shape[::-1]], sitk.sitkUInt8)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume on the same grid holding another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.origin, self.spacing, self.direction)


READABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
NIFTI_DESCRIP_LENGTH = 79  # the NIfTI-1 descrip field holds 80 bytes including the terminating NUL

_ACCEPTED = "a 3-D scalar image: NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MHA/MHD, or a folder holding a DICOM series"


def to_pixel_type(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values (e.g. HU) cast to a pixel type: rounded and clipped to its range for integer types."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _suffix(path: Path) -> str:
    """The lower-case file extension, treating .nii.gz as one extension."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_volume(path: str | Path) -> Volume:
    """Read a 3-D scalar image file or a DICOM series folder completely (or refuse it), keeping pixel type and LPS geometry.

    The checks of ``io.integrity`` refuse cut or corrupt data, NaN/Inf voxels and incomplete DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; give {_ACCEPTED}")
    with itk_warnings_off():
        image = _read_dicom_series(path) if path.is_dir() else _read_image_file(path)
    volume = Volume.from_sitk(_as_3d_scalar(image, path))
    require_finite(str(path), nonfinite_count(volume.array))
    return volume


@contextmanager
def itk_warnings_off() -> Iterator[None]:
    """No ITK/GDCM warning output inside the block (its errors still raise): a read succeeds or raises, it does not print."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_image_file(path: Path) -> sitk.Image:
    """Read one image file through SimpleITK once io.integrity has checked its data, turning failures into InputError."""
    if _suffix(path) not in READABLE_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {_suffix(path) or '(none)'!r}; give {_ACCEPTED}")
    verify_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as an image ({_itk_reason(error)}); give {_ACCEPTED}") from error


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the DICOM series of a folder in slice order (the one with most files), refusing unreadable or uneven slices."""
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
              for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))]
    if not series:
        raise InputError(f"{folder}: the folder holds no DICOM series; give {_ACCEPTED}")
    files = max(series, key=len)
    if len(series) > 1:
        warnings.warn(f"{folder} holds {len(series)} DICOM series; reading the largest ({len(files)} files)",
                      stacklevel=3)
    verify_slice_files(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, for verify_slice_positions
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series cannot be read ({_itk_reason(error)})") from error
    verify_slice_positions(folder, files, reader)
    return image


def _as_3d_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    """Check that an image is a 3-D scalar volume (a 4-D image with one time point is reduced to 3-D)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or "
                         f"vector image); give {_ACCEPTED}")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(f"{path}: is a {image.GetDimension()}-D image of size {image.GetSize()}, not a volume; "
                         f"give {_ACCEPTED}")
    return image


def _itk_reason(error: Exception) -> str:
    """The last non-empty line of an ITK exception text, which states the actual problem."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def write_volume(volume: Volume, path: str | Path, *, metadata: dict[str, str] | None = None,
                 protect: Iterable[str | Path] = ()) -> Path:
    """Write a Volume as NRRD, NIfTI or MHA (by extension, compressed) with metadata, atomically; never overwrite `protect`.

    Metadata become header key/value pairs in NRRD and MHA. NIfTI has no such pairs: there the text of
    metadata["descrip"], or else "key=value; ..." of all pairs, goes into the 80-byte descrip field.
    """
    path = Path(path)
    if _suffix(path) not in WRITABLE_SUFFIXES:
        raise InputError(f"{path}: cannot write {_suffix(path) or 'a file without extension'!r}; "
                         f"use one of {', '.join(WRITABLE_SUFFIXES)}")
    refuse_protected(path, protect)
    require_finite(f"the image to write to {path}", nonfinite_count(volume.array))
    image = volume.with_array(_writable_array(volume.array)).to_sitk()
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    if _suffix(path) in (".nii", ".nii.gz") and metadata:
        image.SetMetaData("ITK_FileNotes", _nifti_description(metadata))  # ITK writes descrip from this key
    with atomic_output(path) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=True)
            verify_file(temporary)  # ITK's NIfTI writer reports success after a short write on a full disk
        except RuntimeError as error:
            raise OutputError(f"{path}: cannot be written ({_itk_reason(error)}); "
                              f"check the folder and its permissions") from error
        except InputError as error:
            raise OutputError(f"{path}: the written file came out incomplete ({error}); check the free space and "
                              "the disk, then write it again") from error
    return path


def refuse_protected(path: Path, protect: Iterable[str | Path]) -> None:
    """Raise InputError when `path` is, or lies inside, one of the protected input paths."""
    target = path.resolve()
    for protected in protect:
        source = Path(protected).resolve()
        if target == source or source in target.parents:
            raise InputError(f"{path}: refusing to overwrite the input {protected}; choose another output path")


def _writable_array(array: np.ndarray) -> np.ndarray:
    """The array itself, or a uint8 copy of a boolean mask (ITK has no boolean pixel type)."""
    return array.astype(np.uint8) if array.dtype == bool else array


def _nifti_description(metadata: dict[str, str]) -> str:
    """The text for the NIfTI descrip field: metadata['descrip'] or all pairs, cut to the field's size."""
    text = metadata.get("descrip") or "; ".join(f"{key}={value}" for key, value in metadata.items())
    return str(text).encode("ascii", "replace")[:NIFTI_DESCRIP_LENGTH].decode("ascii")


def _fmt(values: Sequence[float]) -> str:
    """A tuple of numbers written compactly, e.g. (0.7, 0.7, 5)."""
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _grid_differences(a: Volume, b: Volume, tol: float) -> list[tuple[str, str, str]]:
    """The grid properties in which b differs from a: (property, value in a, value in b)."""
    spacing_a, spacing_b = np.asarray(a.spacing), np.asarray(b.spacing)
    checks = [
        ("size (i, j, k)", a.array.shape[::-1], b.array.shape[::-1], a.array.shape == b.array.shape),
        ("spacing (mm)", a.spacing, b.spacing, np.allclose(spacing_a, spacing_b, rtol=tol, atol=0.0)),
        ("origin (LPS mm)", a.origin, b.origin,
         np.all(np.abs(np.subtract(a.origin, b.origin)) <= tol * spacing_a.min())),
        ("direction", a.direction, b.direction, np.all(np.abs(np.subtract(a.direction, b.direction)) <= tol)),
    ]
    return [(name, _fmt(va), _fmt(vb)) for name, va, vb, same in checks if not same]


def same_grid(a: Volume, b: Volume, tol: float = 1e-4) -> bool:
    """Whether two volumes share size, spacing (relative tol), origin (tol x spacing) and direction (tol)."""
    return not _grid_differences(a, b, tol)


def require_same_grid(a: Volume, b: Volume, names: tuple[str, str] = ("reference", "layout"),
                      tol: float = 1e-4) -> None:
    """Raise InputError saying how the grid of b (names[1]) differs from that of a (names[0])."""
    differences = _grid_differences(a, b, tol)
    if differences:
        details = "; ".join(f"{names[1]} {prop} {vb} differs from {names[0]} {prop} {va}"
                            for prop, va, vb in differences)
        raise InputError(f"{details}; resample the {names[1]} onto the {names[0]} grid")


def _index_matrix(volume: Volume) -> np.ndarray:
    """The 3x3 matrix direction @ diag(spacing) taking an (i, j, k) index offset to an LPS offset in mm."""
    return np.asarray(volume.direction).reshape(3, 3) @ np.diag(volume.spacing)


def index_to_physical(volume: Volume, index_ijk: ArrayLike) -> np.ndarray:
    """LPS point(s) in mm of continuous (i, j, k) index(es) (ITK order; the array is [k, j, i]), shape (..., 3)."""
    index = np.asarray(index_ijk, dtype=float)
    return np.asarray(volume.origin) + index @ _index_matrix(volume).T


def physical_to_index(volume: Volume, point_lps: ArrayLike) -> np.ndarray:
    """Continuous (i, j, k) index(es) of LPS point(s) in mm, shape (..., 3); round to get the nearest voxel."""
    offset = np.asarray(point_lps, dtype=float) - np.asarray(volume.origin)
    return offset @ np.linalg.inv(_index_matrix(volume)).T


def resample_like(volume: Volume, reference: Volume, *, interpolator: str = "linear",
                  default_value: float = 0.0) -> Volume:
    """Resample a volume onto the reference grid (identity transform; "nearest" for label images).

    On the same grid (same_grid) the array is copied unchanged: interpolating there would only add rounding.
    """
    if interpolator not in INTERPOLATORS:
        raise InputError(f"interpolator {interpolator!r} is not known; use one of {', '.join(INTERPOLATORS)}")
    if same_grid(volume, reference):
        return Volume(volume.array.copy(), reference.origin, reference.spacing, reference.direction)
    image = volume.with_array(_writable_array(volume.array)).to_sitk()
    resampled = sitk.Resample(image, reference.array.shape[::-1], sitk.Transform(), INTERPOLATORS[interpolator],
                              reference.origin, reference.spacing, reference.direction, float(default_value))
    return Volume.from_sitk(resampled)


def mask_image(mask: np.ndarray, grid: Volume | sitk.Image) -> sitk.Image:
    """A uint8 SimpleITK image of a mask carrying the geometry of a Volume or an image."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    if isinstance(grid, Volume):
        image.SetOrigin(grid.origin)
        image.SetSpacing(grid.spacing)
        image.SetDirection(grid.direction)
    else:
        image.CopyInformation(grid)
    return image
