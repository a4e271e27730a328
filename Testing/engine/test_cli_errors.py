"""Bad command lines, as a user types them: one line `lungddpm: error: ...`, exit 2, nothing written, inputs untouched.

Every case runs the real `python -m lungddpm` in a subprocess on real files. Cases that could sample do so with
`--sampler ddpm --progress json` (250 steps of the demo model, over a minute): that no step line is printed proves
the check ran before any sampling.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lungddpm.cli_checks import internal_error
from lungddpm.demo.demo import DEMO_MODEL
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import Volume, write_volume

BIG = str(2**70)
DDPM = ("--sampler", "ddpm", "--progress", "json", "--device", "cpu", "--threads", "1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Small real inputs: a phantom CT and layout, a reference folder, broken checkpoints, odd layouts, a plain file."""
    folder = tmp_path_factory.mktemp("inputs")
    ph = make_phantom(phantom_grid((64, 64, 32), (5.0, 5.0, 8.0)), seed=1, nodules=1)
    files = {"ct": write_volume(ph.ct, folder / "ct.nrrd"), "layout": write_volume(ph.layout, folder / "layout.nrrd"),
             "refs": folder / "refs", "file": folder / "afile.txt"}
    write_volume(ph.ct, files["refs"] / "chest.nrrd")
    write_volume(ph.layout, files["refs"] / "chest_layout.nrrd")
    files["file"].write_text("a file where a folder is expected")
    shifted = Volume(ph.layout.array, tuple(np.add(ph.layout.origin, (7.0, 0.0, 0.0))), ph.layout.spacing,
                     ph.layout.direction)
    files["shifted"] = write_volume(shifted.with_array((shifted.array > 0).astype(np.uint8)), folder / "lung-shifted.nrrd")
    foreign = ph.layout.array.copy()
    foreign[foreign == 2] = 3
    foreign[0, 0, 0] = 255
    files["labels"] = write_volume(ph.layout.with_array(foreign), folder / "labels-3-255.nrrd")
    checkpoint = torch.load(DEMO_MODEL, map_location="cpu", weights_only=True)
    weights = checkpoint["ema"]["out.2.weight"].clone()
    weights.view(-1)[:5] = float("nan")
    checkpoint["ema"]["out.2.weight"] = weights
    files["nan"] = folder / "nan-weights.pt"
    torch.save(checkpoint, files["nan"])
    files["text"] = folder / "notes.pt"
    files["text"].write_text("these are not the weights you are looking for\n")
    return files


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


SYN = ("synthesize", "--reference", "{ct}", "--layout", "{layout}", "--model", "demo", *DDPM)
ADD = ("add-nodule", "--layout", "{layout}", "--output", "{out}/l.nrrd")
GEN = ("generate", "--references", "{refs}", "--model", "demo", "--device", "cpu", "--threads", "1")
# (name, command line, words the message holds, whether the command would sample)
CASES = [
    ("png output", (*SYN, "--output", "{out}/s.png"), "s.png: cannot write '.png'", True),
    ("parent is a file", (*SYN, "--output", "{file}/s.nrrd"), "afile.txt is a file", True),
    ("grandparent is a file", (*SYN, "--output", "{file}/a/b/s.nrrd"), "afile.txt is a file", True),
    ("unwritable folder", (*SYN, "--output", "/proc/lungddpm-test/s.nrrd"), "cannot write in the folder /proc", True),
    ("output is the reference", (*SYN, "--output", "{ct}"), "refusing to overwrite the input", True),
    ("labels overwrite the layout", (*SYN, "--output", "{ct_folder}/layout.nrrd"), "refusing to overwrite", True),
    ("threads -2", (*SYN, "--output", "{out}/s.nrrd", "--threads", "-2"), "argument --threads: -2", True),
    ("threads 0", (*SYN, "--output", "{out}/s.nrrd", "--threads", "0"), "argument --threads: 0", True),
    ("seed 2**70", (*SYN, "--output", "{out}/s.nrrd", "--seed", BIG), "argument --seed", True),
    ("seed -1", (*SYN, "--output", "{out}/s.nrrd", "--seed", "-1"), "from 0 to 9223372036854775807", True),
    ("steps 0", (*SYN, "--output", "{out}/s.nrrd", "--steps", "0"), "argument --steps: 0", True),
    ("patch spacing nan", (*SYN, "--output", "{out}/s.nrrd", "--patch-spacing", "nan"), "--patch-spacing", True),
    ("device cuda:x", (*SYN, "--output", "{out}/s.nrrd", "--device", "cuda:x"), "unknown device 'cuda:x'", True),
    ("NaN weights", (*SYN[:6], "{nan}", *DDPM, "--output", "{out}/s.nrrd"), "nan-weights.pt: 5 weight values", True),
    ("text as checkpoint", (*SYN[:6], "{text}", *DDPM, "--output", "{out}/s.nrrd"), "notes.pt could not be read: it is a text file", True),
    ("CT as layout", (*SYN[:4], "{ct}", *SYN[5:], "--output", "{out}/s.nrrd"), "ct.nrrd holds labels", True),
    ("lung mask on another grid", ("synthesize", "--reference", "{ct}", "--lung-mask", "{shifted}", "--model", "demo", *DDPM,
                                   "--output", "{out}/s.nrrd"), "lung-shifted.nrrd origin", True),
    ("nodule mask alone", (*SYN, "--nodule-mask", "{layout}", "--output", "{out}/s.nrrd"), "--nodule-mask goes with", True),
    ("unknown option", (*SYN, "--output", "{out}/s.nrrd", "--bogus"), "unrecognized arguments: --bogus", True),
    ("no command", (), "the following arguments are required", False),
    ("lung-mask png", ("lung-mask", "{ct}", "--output", "{out}/m.png"), "m.png: cannot write", False),
    ("lung-mask under a file", ("lung-mask", "{ct}", "--output", "{file}/m.nrrd"), "afile.txt is a file", False),
    ("add-nodule CT as layout", ("add-nodule", "--layout", "{ct}", "--output", "{out}/l.nrrd", "--center", "0", "0", "0",
                                 "--diameter", "10"), "it looks like an image, not a layout", False),
    ("add-nodule labels 3 and 255", ("add-nodule", "--layout", "{labels}", "--output", "{out}/l.nrrd", "--random", "1"),
     "holds labels [3, 255] outside {0 background, 1 lung, 2 nodule}; relabel it", False),
    ("add-nodule diameter 0", (*ADD, "--center", "0", "0", "0", "--diameter", "0"), "argument --diameter: 0", False),
    ("add-nodule diameter nan", (*ADD, "--center", "0", "0", "0", "--diameter", "nan"), "argument --diameter: nan", False),
    ("add-nodule diameter 1e9", (*ADD, "--center", "0", "0", "0", "--diameter", "1e9"), "larger than the largest ball", False),
    ("add-nodule outside lung, larger than image", (*ADD, "--center", "0", "0", "0", "--diameter", "1e9",
                                                    "--allow-outside-lung"), "larger than the image's smallest extent", False),
    ("add-nodule random with center", (*ADD, "--random", "2", "--center", "0", "0", "0"), "--center is for one nodule", False),
    ("add-nodule random 0", (*ADD, "--random", "0"), "argument --random: 0", False),
    ("add-nodule two kinds at a point", (*ADD, "--center", "0", "0", "0", "--diameter", "5", "--kinds", "solid",
                                         "ground-glass"), "give one --kinds value", False),
    ("add-nodule range with center", (*ADD, "--center", "0", "0", "0", "--diameter", "5", "--diameter-range", "4", "8"),
     "--diameter-range goes with --random", False),
    ("add-nodule range reversed", (*ADD, "--random", "2", "--diameter-range", "20", "3"), "20 3 are out of order", False),
    ("add-nodule irregularity 2", (*ADD, "--random", "2", "--irregularity", "2"), "argument --irregularity: 2", False),
    ("add-nodule without diameter", (*ADD, "--center", "0", "0", "0"), "needs --center X Y Z and --diameter MM", False),
    ("add-nodule png", ("add-nodule", "--layout", "{layout}", "--output", "{out}/l.png", "--random", "1"), "l.png: cannot write", False),
    ("info text file", ("info", "{text}"), "it is a text file, not a model", False),
    ("info NaN weights", ("info", "{nan}"), "NaN or infinite", False),
    ("demo under a file", ("demo", "--output", "{file}/demo", "--device", "cpu"), "afile.txt is a file", True),
    ("demo output is a file", ("demo", "--output", "{file}", "--device", "cpu"), "is a file, not a folder", True),
    ("demo seed 2**70", ("demo", "--output", "{out}/demo", "--seed", BIG), "argument --seed", True),
    ("demo threads -2", ("demo", "--output", "{out}/demo", "--threads", "-2"), "argument --threads", True),
    ("prepare size 0", ("prepare", "--input", "{refs}", "--output", "{out}/prep", "--size", "0"), "size 0 (--size)", False),
    ("prepare size -8", ("prepare", "--input", "{refs}", "--output", "{out}/prep", "--size", "-8"), "size -8 (--size)", False),
    ("prepare output is a file", ("prepare", "--input", "{ct_folder}", "--output", "{file}"), "is a file, not a folder", False),
    ("train output under a file", ("train", "--data", "{refs}", "--output", "{file}/run", "--device", "cpu",
                                   "--set", "image_size=16", "--set", "channel_mult=[1,2]", "--set", "attention_resolutions=[8]",
                                   "--set", "num_channels=32", "--set", "timesteps=8"), "afile.txt is a file", False),
    ("train batch size 0", ("train", "--data", "{refs}", "--output", "{out}/run", "--batch-size", "0"), "--batch-size", False),
    ("train seed -1", ("train", "--data", "{refs}", "--output", "{out}/run", "--set", "seed=-1"), "seed -1 must lie in", False),
    ("generate output is a file", (*GEN, "--output", "{file}"), "afile.txt is a file", True),
    ("generate output under a file", (*GEN, "--output", "{file}/sets"), "afile.txt is a file", True),
    ("generate into the references", (*GEN, "--output", "{refs}/chest.nrrd"), "refusing to overwrite the input", True),
    ("generate variants 0", (*GEN, "--output", "{out}/sets", "--variants", "0"), "argument --variants: 0", True),
    ("generate steps 0", (*GEN, "--output", "{out}/sets", "--steps", "0"), "argument --steps: 0", True),
    ("evaluate feature size 0", ("evaluate", "{refs}", "--output", "{out}/report", "--feature-size", "0"),
     "feature size 0 (--feature-size)", False),
    ("evaluate soft tissue reversed", ("evaluate", "{refs}", "--output", "{out}/report", "--soft-tissue-hu", "300", "-300"),
     "300 -300 are out of order", False),
    ("evaluate previews -1", ("evaluate", "{refs}", "--output", "{out}/report", "--previews", "-1"), "argument --previews", False),
]


@pytest.mark.parametrize("command, words, samples", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_line_before_any_work(inputs, tmp_path, command, words, samples):
    if "/proc/" in " ".join(command) and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, a folder no one can write in")
    out = tmp_path / "out"
    values = {k: str(v) for k, v in inputs.items()} | {"out": str(out), "ct_folder": str(inputs["ct"].parent)}
    argv = [part.format(**values) for part in command]
    before = _digest(inputs["ct"].parent)
    res = subprocess.run([sys.executable, "-m", "lungddpm", *argv], capture_output=True, text=True, timeout=120)
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("lungddpm: error: "), res.stderr[-3000:]
    assert words in lines[0] and "Traceback" not in res.stderr and "in-memory" not in res.stderr
    assert not out.exists()  # nothing written
    assert _digest(inputs["ct"].parent) == before  # inputs untouched, no file added beside them
    if samples:  # no step was sampled: the check came first
        assert not any(line.startswith('{"step"') for line in res.stdout.splitlines()), res.stdout[-2000:]
        assert "sampling [" not in res.stderr


def test_an_internal_error_is_one_line_with_the_traceback_saved(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    try:
        raise KeyError("unexpected")
    except KeyError as error:
        assert internal_error(error) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lungddpm: error: internal error (KeyError: 'unexpected')")
    saved = [p for p in tmp_path.iterdir() if p.name.startswith("lungddpm-traceback-")]
    assert len(saved) == 1 and str(saved[0]) in lines[0]
    assert "Traceback (most recent call last)" in saved[0].read_text() and "KeyError" in saved[0].read_text()


def test_the_seed_range_is_stated_in_help():
    res = subprocess.run([sys.executable, "-m", "lungddpm", "synthesize", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "0 to 9223372036854775807" in " ".join(res.stdout.split())


def test_add_nodule_random_takes_the_irregularity(inputs, tmp_path):
    res = subprocess.run([sys.executable, "-m", "lungddpm", "add-nodule", "--layout", str(inputs["layout"]),
                          "--output", str(tmp_path / "l.nrrd"), "--random", "2", "--irregularity", "0.9",
                          "--diameter-range", "10", "12", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [n["irregularity"] for n in json.loads(res.stdout)["nodules"]] == [0.9, 0.9]
