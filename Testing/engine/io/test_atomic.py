"""Atomic outputs (lungddpm.io.atomic): same bytes as a direct write, nothing left by a full disk, a failure or a kill."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lungddpm.cli import main
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.errors import OutputError
from lungddpm.generation.generate import read_references
from lungddpm.io.atomic import is_temporary, outputs_together, remove_temporaries, write_text
from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.runtime.preview import write_png

ENGINE = Path(__file__).resolve().parents[3] / "engine"


def _files(folder: Path) -> list[str]:
    """Every file below folder, hidden ones included, as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> Path:
    """A small phantom chest CT in a folder of its own."""
    path = tmp_path_factory.mktemp("chest") / "ct.nii.gz"
    write_volume(make_phantom(phantom_grid(size=(64, 64, 40), spacing=(5.5, 5.5, 6.0)), seed=0).ct, path)
    return path


@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_atomic_write_gives_the_bytes_of_a_direct_write(tmp_path, ending):
    volume = Volume(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 100, (1.5, -2.0, 3.0), (0.7, 0.8, 2.5))
    written = write_volume(volume, tmp_path / f"atomic{ending}", metadata={"descrip": "d", "seed": "3"})
    image = volume.to_sitk()
    image.SetMetaData("descrip", "d")
    image.SetMetaData("seed", "3")
    if "nii" in ending:
        image.SetMetaData("ITK_FileNotes", "d")
    sitk.WriteImage(image, str(tmp_path / f"direct{ending}"), useCompression=True)
    assert written.read_bytes() == (tmp_path / f"direct{ending}").read_bytes()
    assert written.stat().st_mode == (tmp_path / f"direct{ending}").stat().st_mode
    assert _files(tmp_path) == sorted([f"atomic{ending}", f"direct{ending}"])


def test_no_space_from_the_write_call_leaves_nothing_and_says_so(chest, tmp_path, monkeypatch, capsys):
    real_write = sitk.WriteImage

    def disk_full(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:500])  # what reached the disk before it filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    out = tmp_path / "masks" / "lung.nii.gz"
    assert main(["lung-mask", str(chest), "--output", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"lungddpm: error: no space left on {out.parent}: lung.nii.gz was not written; ")
    assert "permission" not in message and len(message.splitlines()) == 1
    assert not (tmp_path / "masks").exists()  # neither the file, nor a temporary, nor the folder made for it


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "preview.png"])
def test_a_writer_that_reports_success_after_a_short_write_is_caught(tmp_path, monkeypatch, name):
    # ITK's NIfTI and PNG writers report success after a short write on a full disk: the file is read back
    real_write = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) * 6 // 10)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=4096))
    with pytest.raises(OutputError, match=rf"no space left on {tmp_path}: {name} was not written"):
        if name.endswith(".png"):
            write_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), tmp_path / name)
        else:
            write_volume(Volume(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)), tmp_path / name)
    assert _files(tmp_path) == []
    monkeypatch.setattr(shutil, "disk_usage", real_usage)  # with room left, the message says what happened
    with pytest.raises(OutputError, match="came out incomplete"):
        write_volume(Volume(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)), tmp_path / "b.nii.gz")
    assert _files(tmp_path) == []


def test_a_volume_with_nan_is_not_written(tmp_path):
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(Exception, match="1 voxels are NaN or infinite"):
        write_volume(Volume(array), tmp_path / "nan.nrrd")
    assert _files(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs); needs the right to mount, else the test is skipped."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the real full-disk check is skipped")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_a_real_full_disk_leaves_nothing(small_disk, ending):
    small = Volume(np.zeros((8, 8, 8), np.int16))
    assert write_volume(small, small_disk / f"small{ending}").is_file()  # the disk takes a small image
    noise = Volume(np.random.default_rng(0).normal(size=(128, 128, 128)).astype(np.float32))  # 8 MB, incompressible
    with pytest.raises(OutputError, match=f"no space left on {small_disk}: noise{ending} was not written"):
        write_volume(noise, small_disk / f"noise{ending}")
    assert _files(small_disk) == [f"small{ending}"]


def test_files_written_together_appear_together_or_not_at_all(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="failed after the first file"):
        with outputs_together():
            write_text(tmp_path / "new" / "a.json", "{}")
            raise RuntimeError("failed after the first file")
    assert _files(tmp_path) == [] and not (tmp_path / "new").exists()

    real_replace, calls = os.replace, []

    def second_rename_fails(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.EIO, "input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="input/output error"):
        with outputs_together():
            write_text(tmp_path / "a.json", "{}")
            write_text(tmp_path / "b.json", "{}")
    assert len(calls) == 2 and _files(tmp_path) == []  # the first file, already in place, was removed again


def test_signals_during_the_renames_wait_until_both_files_are_in_place(tmp_path, monkeypatch):
    real_replace = os.replace

    def interrupted_rename(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the two renames
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        with outputs_together():
            write_text(tmp_path / "image.txt", "image")
            write_text(tmp_path / "labels.txt", "labels")
    assert _files(tmp_path) == ["image.txt", "labels.txt"]


KILLED_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import SimpleITK as sitk
    from lungddpm.cli import main
    real_write = sitk.WriteImage
    def write_then_die(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        os.truncate(path, Path(path).stat().st_size // 2)  # half the file is on disk
        os.kill(os.getpid(), signal.SIGKILL)
    sitk.WriteImage = write_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_while_writing_leaves_no_output_and_nothing_the_next_run_reads(chest, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(chest, refs / "chest.nii.gz")
    out = refs / "mask.nii.gz"  # written into a folder that generate reads references from
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, "lung-mask", str(refs / "chest.nii.gz"),
                             "--output", str(out)], env={**os.environ, "PYTHONPATH": str(ENGINE)},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = [p for p in refs.iterdir() if p.name not in ("chest.nii.gz",)]
    assert not out.exists() and len(leftovers) == 1 and is_temporary(leftovers[0])
    assert leftovers[0].name.startswith(".mask.nii.gz.tmp-") and leftovers[0].name.endswith(".nii.gz")
    assert [r.id for r in read_references(refs)] == ["chest"]  # the half-written temporary is no reference

    assert main(["lung-mask", str(refs / "chest.nii.gz"), "--output", str(out)]) == 0
    assert read_volume(out).array.max() == 1
    assert remove_temporaries(refs) == leftovers and sorted(p.name for p in refs.iterdir()) == ["chest.nii.gz", "mask.nii.gz"]
