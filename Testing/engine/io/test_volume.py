"""Reading, writing and geometry of volumes (lungddpm.volume)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import rotation
from lungddpm.errors import InputError
from lungddpm.io.volume import (Volume, index_to_physical, physical_to_index, read_volume, require_same_grid, resample_like, same_grid, write_volume)

SPACING = (0.7, 0.7, 5.0)
ORIGIN = (-120.5, 80.25, -300.0)  # exact in float32, as NIfTI stores it


DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation((1.0, 2.0, 3.0), 0.5),
}


def make_volume(direction: np.ndarray, dtype=np.int16) -> Volume:
    """A small volume with distinct voxel values, anisotropic spacing and the given direction."""
    array = (np.arange(6 * 7 * 8).reshape(6, 7, 8) * 7 - 1000).astype(dtype)
    return Volume(array, ORIGIN, SPACING, direction.ravel())


def assert_same_geometry(a: Volume, b: Volume, tol: float) -> None:
    """Origin, spacing and direction equal within tol."""
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


def test_dicom_series_and_nifti_agree(real_ct_dir: Path) -> None:
    series = read_volume(real_ct_dir / "dicom")
    nifti = read_volume(real_ct_dir / "ct.nii.gz")
    assert series.array.shape == (64, 512, 512)
    assert series.array.dtype == np.int16
    np.testing.assert_array_equal(series.array, nifti.array)
    assert_same_geometry(series, nifti, 1e-3)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_write_read_round_trip(tmp_path: Path, suffix: str, name: str) -> None:
    volume = make_volume(DIRECTIONS[name])
    path = write_volume(volume, tmp_path / "sub" / f"image{suffix}", metadata={"lungddpm_synthetic": "yes"})
    back = read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, volume.array)
    assert_same_geometry(back, volume, 1e-5)


def test_float_pixels_kept(tmp_path: Path) -> None:
    volume = make_volume(DIRECTIONS["oblique"], dtype=np.float32)
    back = read_volume(write_volume(volume, tmp_path / "f.nrrd"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, volume.array)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_metadata_written_as_header_pairs(tmp_path: Path, suffix: str) -> None:
    path = write_volume(make_volume(np.eye(3)), tmp_path / f"m{suffix}",
                        metadata={"lungddpm_synthetic": "yes", "lungddpm_seed": "7"})
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("lungddpm_synthetic") == "yes"
    assert reader.GetMetaData("lungddpm_seed") == "7"


def test_nifti_descrip(tmp_path: Path) -> None:
    long_text = "SYNTHETIC CT made by lungddpm " + "x" * 100
    path = write_volume(make_volume(np.eye(3)), tmp_path / "d.nii.gz", metadata={"descrip": long_text})
    descrip = nib.load(path).header["descrip"].item().decode()
    assert descrip == long_text[:79]
    path = write_volume(make_volume(np.eye(3)), tmp_path / "e.nii", metadata={"model": "lung-ddpm", "seed": "3"})
    assert nib.load(path).header["descrip"].item().decode() == "model=lung-ddpm; seed=3"


def test_nifti_oblique_uses_qform_and_sform(tmp_path: Path) -> None:
    # SimpleITK (ITK 5.4) writes an oblique direction into both the qform (quaternion) and the sform
    # (a full affine), both with code 1 (scanner anatomical), converting LPS to NIfTI's RAS; both hold the
    # same affine to float32 precision, and reading it back restores the direction within 1e-7.
    volume = make_volume(DIRECTIONS["oblique"])
    path = write_volume(volume, tmp_path / "oblique.nii.gz")
    header = nib.load(path).header
    expected = np.eye(4)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected[:3, :3] = lps_to_ras @ DIRECTIONS["oblique"] @ np.diag(SPACING)
    expected[:3, 3] = lps_to_ras @ np.asarray(ORIGIN)
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), expected, atol=1e-5)
    np.testing.assert_allclose(header.get_sform(), expected, atol=1e-5)


def test_index_physical_round_trip_oblique() -> None:
    volume = make_volume(DIRECTIONS["oblique"])
    image = volume.to_sitk()
    index = np.array([[0.0, 0.0, 0.0], [1.5, 2.25, 3.75], [7.0, 6.0, 5.0]])
    points = index_to_physical(volume, index)
    for ijk, point in zip(index, points):
        np.testing.assert_allclose(point, image.TransformContinuousIndexToPhysicalPoint(ijk.tolist()), atol=1e-9)
    np.testing.assert_allclose(physical_to_index(volume, points), index, atol=1e-9)


def test_resample_like_identity_on_same_grid() -> None:
    volume = make_volume(DIRECTIONS["oblique"])
    for interpolator in ("nearest", "linear"):
        resampled = resample_like(volume, volume, interpolator=interpolator)
        np.testing.assert_array_equal(resampled.array, volume.array)
        assert same_grid(resampled, volume)


def test_resample_like_moves_onto_reference_grid() -> None:
    labels = Volume(np.zeros((10, 10, 10), np.uint8), spacing=(1.0, 1.0, 1.0))
    labels.array[2:8, 2:8, 2:8] = 2
    reference = Volume(np.zeros((5, 20, 20), np.int16), spacing=(0.5, 0.5, 2.0))
    resampled = resample_like(labels, reference, interpolator="nearest")
    assert same_grid(resampled, reference)
    assert set(np.unique(resampled.array)) == {0, 2}
    with pytest.raises(InputError, match="interpolator 'cubic'"):
        resample_like(labels, reference, interpolator="cubic")


def test_require_same_grid_explains_difference() -> None:
    reference = make_volume(np.eye(3))
    layout = Volume(reference.array, reference.origin, (1.0, 1.0, 2.0), reference.direction)
    assert not same_grid(reference, layout)
    assert same_grid(reference, Volume(reference.array, np.add(reference.origin, 1e-6), SPACING, reference.direction))
    with pytest.raises(InputError, match=r"layout spacing \(mm\) \(1, 1, 2\) differs from reference spacing "
                                         r"\(mm\) \(0.7, 0.7, 5\); resample the layout onto the reference grid"):
        require_same_grid(reference, layout)
    shifted = Volume(np.zeros((6, 7, 9), np.int16), reference.origin, SPACING, reference.direction)
    with pytest.raises(InputError, match=r"mask size \(i, j, k\) \(9, 7, 6\) differs from ct size"):
        require_same_grid(reference, shifted, names=("ct", "mask"))


def test_protect_refuses_to_overwrite_inputs(tmp_path: Path) -> None:
    source = write_volume(make_volume(np.eye(3)), tmp_path / "input.nrrd")
    before = source.read_bytes()
    with pytest.raises(InputError, match="input.nrrd.*refusing to overwrite"):
        write_volume(make_volume(np.eye(3)), tmp_path / "." / "input.nrrd", protect=[str(source)])
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_volume(make_volume(np.eye(3)), tmp_path / "dicom" / "out.nrrd", protect=[tmp_path / "dicom"])
    assert source.read_bytes() == before
    assert write_volume(make_volume(np.eye(3)), tmp_path / "output.nrrd", protect=[source]).exists()


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.nrrd: no such file"):
        read_volume(tmp_path / "missing.nrrd")
    text = tmp_path / "notes.nrrd"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match="notes.nrrd: cannot be read as an image"):
        read_volume(text)
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "readme.txt").write_text("no DICOM here")
    with pytest.raises(InputError, match="empty_folder: the folder holds no DICOM series"):
        read_volume(tmp_path / "empty_folder")
    with pytest.raises(InputError, match="scan.png: unsupported file type"):
        read_volume(_write_image(tmp_path / "scan.png", sitk.Image(8, 8, sitk.sitkUInt8)))
    with pytest.raises(InputError, match="flat.nrrd: is a 2-D image"):
        read_volume(_write_image(tmp_path / "flat.nrrd", sitk.Image(8, 8, sitk.sitkInt16)))
    with pytest.raises(InputError, match="rgb.nrrd: has 3 components per voxel"):
        read_volume(_write_image(tmp_path / "rgb.nrrd", sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3)))
    with pytest.raises(InputError, match="out.png: cannot write"):
        write_volume(make_volume(np.eye(3)), tmp_path / "out.png")


def _write_image(path: Path, image: sitk.Image) -> Path:
    """Write an image with SimpleITK directly and return its path."""
    sitk.WriteImage(image, str(path))
    return path
