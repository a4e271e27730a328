"""Output paths checked before the work (lungddpm.io.outputs): real files and folders, nothing created by a check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lungddpm.errors import InputError
from lungddpm.io.outputs import check_output_file, check_output_folder, image_bytes
from lungddpm.io.volume import Volume, write_volume


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_good_output_passes_and_nothing_is_created(tmp_path):
    (tmp_path / "ct.nrrd").write_bytes(b"input")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.nii.gz", protect=[tmp_path / "ct.nrrd"],
                             needed_bytes=1 << 20) == tmp_path / "new" / "deeper" / "out.nii.gz"
    assert check_output_folder(tmp_path / "run" / "a", needed_bytes=1 << 20) == tmp_path / "run" / "a"
    assert _listing(tmp_path) == ["ct.nrrd"]


@pytest.mark.parametrize("name, words", [
    ("out.png", "cannot write '.png'; use one of .nrrd"),
    ("out", "cannot write 'a file without extension'"),
    ("afile/out.nrrd", "cannot create its folder because .*afile is a file"),
    ("afile/a/b/out.nrrd", "cannot create its folder because .*afile is a file"),
    ("folder.nrrd", "is a folder; give a file name"),
    ("ct.nrrd", "refusing to overwrite the input"),
])
def test_bad_output_files_are_named_with_the_fix(tmp_path, name, words):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "folder.nrrd").mkdir()
    (tmp_path / "ct.nrrd").write_bytes(b"input")
    before = _listing(tmp_path)
    with pytest.raises(InputError, match=words) as error:
        check_output_file(tmp_path / name, protect=[tmp_path / "ct.nrrd"])
    assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)
    assert _listing(tmp_path) == before and (tmp_path / "ct.nrrd").read_bytes() == b"input"


def test_bad_output_folders_are_named_with_the_fix(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "inputs").mkdir()
    with pytest.raises(InputError, match="afile: is a file, not a folder"):
        check_output_folder(tmp_path / "afile")
    with pytest.raises(InputError, match="because .*afile is a file"):
        check_output_folder(tmp_path / "afile" / "run")
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        check_output_folder(tmp_path / "inputs" / "run", protect=[tmp_path / "inputs"])
    assert _listing(tmp_path) == ["afile", "inputs"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a folder no one can write in")
def test_a_folder_that_cannot_be_written_is_refused():
    # /proc refuses new files even to root (chmod would not stop root)
    with pytest.raises(InputError, match="cannot write in the folder /proc"):
        check_output_file("/proc/lungddpm/out.nrrd")
    with pytest.raises(InputError, match="cannot write in the folder /proc"):
        check_output_folder("/proc/lungddpm-run")


def test_a_disk_without_room_is_refused(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(InputError, match=r"out.nrrd: needs up to .* MiB but .* MiB free; free some space"):
        check_output_file(tmp_path / "out.nrrd", needed_bytes=free * 2)
    with pytest.raises(InputError, match="needs up to"):
        check_output_folder(tmp_path / "run", needed_bytes=free * 2)


def test_image_bytes_come_from_the_header(tmp_path):
    volume = Volume(np.zeros((7, 9, 11), np.int16), spacing=(0.5, 0.5, 2.0))
    for name in ("ct.nrrd", "ct.nii.gz", "ct.mha"):
        assert image_bytes(write_volume(volume, tmp_path / name)) == volume.array.nbytes
    assert image_bytes(write_volume(volume.with_array(volume.array.astype(np.float32)), tmp_path / "f.nrrd")) == 7 * 9 * 11 * 4
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"x" * 300)
    (series / "2.dcm").write_bytes(b"x" * 200)
    assert image_bytes(series) == 500  # a DICOM folder: its files' total size
