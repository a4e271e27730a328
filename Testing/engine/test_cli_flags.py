"""Every flag of every `lungddpm` command changes what it says: one table, one end-to-end run per flag.

Each entry of FLAGS runs its command twice in this process (`lungddpm.cli.main`): once as its scenario's
base command line (cached per scenario) and once with the flag added (or its value replaced), then shows
the difference: another output, a provenance entry, a refusal that names the flag's value. A flag that the
command ignores makes its entry fail. `test_every_flag_has_an_entry` fails for a flag of the parser that
is not in the table, so a new flag cannot be forgotten: add its entry (or a string saying why it is shown
elsewhere). Cheap by design: a random 8³ model with T = 8 (helpers.random_model), the bundled attribute model
(demo-nodules, 16³ cubes) for attribute flags, the bundled demo for `demo`, small phantoms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from helpers import TINY_TRAIN, random_model
from lungddpm.cli import build_parser, main
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import index_to_physical, read_volume, write_volume
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.layout.segmentation import TOTALSEGMENTATOR_LABELS
from lungddpm.layout.sidecar import layout_records, write_sidecar
from lungddpm.model.checkpoints import save_checkpoint
from lungddpm.model.fastpath import pick_fast_path
from lungddpm.training.prepare import prepare_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Run:
    """One command run: exit status, what it printed, the folder it ran in, torch's thread count after it."""

    rc: int
    out: str
    err: str
    folder: Path
    threads: int

    def path(self, name: str) -> Path:
        """A file the command wrote (relative to the folder it ran in)."""
        return self.folder / name


def nrrd_header(path: Path) -> dict[str, str]:
    """The key:=value pairs of an NRRD header, parsed here as plain text (not by ITK)."""
    head = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    return dict(line.split(":=", 1) for line in head.splitlines() if ":=" in line)


def voxels(name: str) -> Callable[[Run], str]:
    """A view: the SHA-256 of an output image's voxels."""
    return lambda run: hashlib.sha256(np.ascontiguousarray(read_volume(run.path(name)).array).tobytes()).hexdigest()


def header(name: str, key: str) -> Callable[[Run], str | None]:
    """A view: one provenance entry of an NRRD output."""
    return lambda run: nrrd_header(run.path(name)).get(key)


def text(name: str) -> Callable[[Run], str]:
    """A view: a written text file."""
    return lambda run: run.path(name).read_text()


def files(run: Run) -> list[str]:
    """A view: every file the command wrote."""
    return sorted(p.relative_to(run.folder).as_posix() for p in run.folder.rglob("*") if p.is_file())


def stdout(run: Run) -> str:
    """A view: what the command printed."""
    return run.out


def differs(*views: Callable[[Run], object]) -> Callable[[Run, Run], None]:
    """Both runs succeed and each view of the flagged run differs from the default's."""
    def check(default: Run, flagged: Run) -> None:
        assert default.rc == 0 and flagged.rc == 0, (default.err, flagged.err)
        for view in views:
            assert view(flagged) != view(default), view
    return check


def records(view: Callable[[Run], object], value: object) -> Callable[[Run, Run], None]:
    """The flagged run succeeds and the view shows the value (the default's does not)."""
    def check(default: Run, flagged: Run) -> None:
        assert flagged.rc == 0, flagged.err
        assert view(flagged) == value and view(default) != value, (view(default), view(flagged))
    return check


def same(view: Callable[[Run], object]) -> Callable[[Run, Run], None]:
    """Both runs succeed with the same view (the flag undoes a change made to the other arguments)."""
    def check(default: Run, flagged: Run) -> None:
        assert default.rc == 0 and flagged.rc == 0, (default.err, flagged.err)
        assert view(flagged) == view(default), view
    return check


def rescues(default: Run, flagged: Run) -> None:
    """The default run is refused (exit 2) and the flagged one succeeds."""
    assert default.rc == 2 and flagged.rc == 0, (default.rc, flagged.rc, flagged.err)


def weights(name: str) -> Callable[[Run], str]:
    """A view: the SHA-256 of a training checkpoint's model weights."""
    def view(run: Run) -> str:
        state = torch.load(run.path(name), map_location="cpu", weights_only=True)["model"]
        return hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()
    return view


def manifest(key: str) -> Callable[[Run], object]:
    """A view: one entry of the first case of generate's manifest.jsonl."""
    return lambda run: json.loads(run.path(f"{GEN}/manifest.jsonl").read_text().splitlines()[0])[key]


def refused(words: str) -> Callable[[Run, Run], None]:
    """The default run succeeds; the flagged one is refused with one error line naming the words."""
    def check(default: Run, flagged: Run) -> None:
        assert default.rc == 0, default.err
        assert flagged.rc == 2 and flagged.err.startswith("lungddpm: error: ") and words in flagged.err, flagged.err
    return check


def threads(n: int) -> Callable[[Run, Run], None]:
    """The flagged run (stopped by STOP once the threads are set) left torch on n threads; the default did not."""
    def check(default: Run, flagged: Run) -> None:
        assert flagged.threads == n and default.threads != n, flagged.err
    return check


def all_of(*checks: Callable[[Run, Run], None]) -> Callable[[Run, Run], None]:
    """Every check holds."""
    def check(default: Run, flagged: Run) -> None:
        for one in checks:
            one(default, flagged)
    return check


def json_lines(key: str) -> Callable[[Run], bool]:
    """A view: whether stdout is JSON lines, one of them holding the key."""
    def view(run: Run) -> bool:
        try:
            return any(key in json.loads(line) for line in run.out.splitlines() if line.strip())
        except json.JSONDecodeError:
            return False
    return view


def report(key: str) -> Callable[[Run], object]:
    """A view: one entry of evaluate's report.json (dotted path)."""
    def view(run: Run) -> object:
        value = json.loads(run.path("rep/report.json").read_text())
        for part in key.split("."):
            value = value[part]
        return value
    return view


# the default, auto, is bf16 on CPUs with native bf16 and fp32 elsewhere: the flag asks for the other one
OTHER_PRECISION = "fp32" if pick_fast_path(torch.device("cpu"), "auto").precision == "bf16" else "bf16"
REMOVE = "<remove>"  # in a Flag's args after a flag: take that flag out of the base command line
STOP = ("--device", "cuda:7")  # refused after --threads is applied and before any work: --threads is shown cheaply
# The base command line of each scenario: {name} is a file or folder of the `data` fixture; outputs are relative.
SYN = ["synthesize", "--reference", "{ct}", "--layout", "{layout}", "--model", "{tiny8}", "--output", "out.nrrd",
       "--device", "cpu", "--steps", "3"]  # 3: with 2 steps dpmpp2m takes the same steps as ddim
SCENARIOS = {
    "synthesize": SYN,
    "synthesize-masks": ["synthesize", "--reference", "{ct}", "--lung-mask", "{lung}", "--model", "{tiny8}", "--output",
                         "out.nrrd", "--device", "cpu", "--steps", "3"],
    # demo-nodules' cubes are 16³ of 1.5 mm: 3-mm voxels (48 mm) hold the 20-mm nodule of the test phantom
    "synthesize-patch": [*SYN[:6], "demo-nodules", *SYN[7:], "--patch-spacing", "3"],
    "synthesize-described": [*SYN[:6], "demo-nodules", *SYN[7:], "--patch-spacing", "3", "--nodule", "texture=ground-glass"],
    "synthesize-ddpm": [*SYN[:6], "{tiny8}", *SYN[7:-2], "--sampler", "ddpm"],
    "lung-mask": ["lung-mask", "{ct}", "--output", "mask.nrrd"],
    "from-segmentation": ["layout", "from-segmentation", "{seg}", "--output", "lay.nrrd", "--nodule-labels", "99"],
    "add-nodule": ["add-nodule", "--layout", "{layout}", "--output", "lay.nrrd", "--center", "{lung_point}",
                   "--diameter", "25"],
    "add-nodule-random": ["add-nodule", "--layout", "{layout}", "--output", "lay.nrrd", "--random", "2"],
    "demo": ["demo", "--output", "d", "--device", "cpu"],
    "generate": ["generate", "--references", "{refs}", "--model", "{tiny8}", "--output", "gen", "--steps", "3",
                 "--device", "cpu", "--dataset-id", "7"],
    "generate-ddpm": ["generate", "--references", "{refs}", "--model", "{tiny8}", "--output", "gen", "--sampler", "ddpm",
                      "--device", "cpu", "--dataset-id", "7"],
    # demo-nodules on references without a nodule of their own, one random nodule that fits its 24-mm cube
    "generate-attributes": ["generate", "--references", "{refs0}", "--model", "demo-nodules", "--output", "gen",
                            "--steps", "3", "--device", "cpu", "--dataset-id", "7", "--nodules", "1",
                            "--diameter-range", "8", "12"],
    "generate-described": ["generate", "--references", "{refs0}", "--model", "demo-nodules", "--output", "gen",
                           "--steps", "3", "--device", "cpu", "--dataset-id", "7", "--nodules", "1",
                           "--diameter-range", "8", "12", "--attributes-from", "texture=ground-glass"],
    "evaluate": ["evaluate", "{dataset}", "--output", "rep", "--device", "cpu", "--feature-size", "16", "--previews", "1"],
    "evaluate-damaged": ["evaluate", "{damaged}", "--output", "rep", "--device", "cpu", "--feature-size", "16"],
    "train": ["train", "--data", "{prepared}", "--output", "run", "--steps", "1", "--device", "cpu", *TINY_TRAIN,
              "--set", "image_size=8"],
    "prepare": ["prepare", "--input", "{cases}", "--output", "prep", "--size", "16"],
}
GEN = "gen/Dataset007_LungDDPMSynthetic"
GEN_IMAGE = f"{GEN}/imagesTr/LUNGSYN_c0_v000_0000.nii.gz"
GEN_LABEL = f"{GEN}/labelsTr/LUNGSYN_c0_v000.nii.gz"


@dataclass(frozen=True)
class Flag:
    """How a flag is shown: its scenario, what it adds to (or replaces in) the base command line, the check."""

    scenario: str
    args: tuple[str, ...]
    check: Callable[[Run, Run], None]


# (command, flag) -> Flag, or a string: why the flag is not run here (and where it is shown instead).
FLAGS: dict[tuple[str, str], Flag | str] = {
    ("lungddpm", "--version"): "prints the version and exits (argparse's own action); test_cli.py runs it",
    # synthesize
    ("synthesize", "--reference"): Flag("synthesize", ("--reference", "{ct2}"), differs(voxels("out.nrrd"))),
    ("synthesize", "--layout"): Flag("synthesize", ("--layout", "{layout2}"),
                                     all_of(differs(voxels("out_labels.nrrd")),
                                            records(header("out.nrrd", "layout"), "layout2.nrrd"))),
    ("synthesize", "--lung-mask"): Flag("synthesize", ("--layout", REMOVE, "--lung-mask", "{lung}"),
                                        all_of(differs(voxels("out_labels.nrrd")),
                                               records(header("out.nrrd", "layout"), "lung.nrrd"))),
    ("synthesize", "--nodule-mask"): Flag("synthesize-masks", ("--nodule-mask", "{nodules}"),
                                          all_of(differs(voxels("out_labels.nrrd")),
                                                 records(header("out.nrrd", "layout"), "lung.nrrd + nodules.nrrd"))),
    ("synthesize", "--model"): Flag("synthesize", ("--model", "{tiny8_copy}"),
                                    records(header("out.nrrd", "model"), "copy-of-tiny8.pt")),
    ("synthesize", "--output"): Flag("synthesize", ("--output", "other.nii.gz"),
                                     differs(files)),
    ("synthesize", "--seed"): Flag("synthesize", ("--seed", "5"),
                                   all_of(differs(voxels("out.nrrd")), records(header("out.nrrd", "seed"), "5"))),
    ("synthesize", "--device"): Flag("synthesize", ("--device", "cuda:7"), refused("cuda:7")),
    ("synthesize", "--sampler"): Flag("synthesize", ("--sampler", "ddim"),
                                      all_of(differs(voxels("out.nrrd")), records(header("out.nrrd", "sampler"), "ddim"))),
    ("synthesize", "--steps"): Flag("synthesize", ("--steps", "1"),
                                    all_of(differs(voxels("out.nrrd")), records(header("out.nrrd", "steps"), "1"))),
    ("synthesize", "--precision"): Flag("synthesize", ("--precision", OTHER_PRECISION),
                                        all_of(differs(voxels("out.nrrd")),
                                               records(header("out.nrrd", "precision"), OTHER_PRECISION))),
    ("synthesize", "--patch-spacing"): Flag("synthesize-patch", ("--patch-spacing", "4"),
                                            all_of(differs(voxels("out.nrrd")),
                                                   records(header("out.nrrd", "patch_spacing_mm"), "4"))),
    ("synthesize", "--variant"): Flag("synthesize-ddpm", ("--variant", "released"),
                                      all_of(differs(voxels("out.nrrd")),
                                             records(header("out.nrrd", "aas_variant"), "released"))),
    ("synthesize", "--nodule"): Flag("synthesize-patch", ("--nodule", "texture=ground-glass"),
                                     all_of(differs(voxels("out.nrrd")),
                                            records(header("out.nrrd", "nodule_attributes_from"),
                                                    "--nodule texture=ground-glass"))),
    ("synthesize", "--prompt"): Flag("synthesize-patch", ("--prompt", "ground-glass nodule"),
                                     all_of(differs(voxels("out.nrrd")),
                                            records(header("out.nrrd", "nodule_attributes_from"),
                                                    "--prompt ground-glass nodule"))),
    ("synthesize", "--nodules-json"): Flag("synthesize-patch", ("--nodules-json", "{sidecar}"),
                                           all_of(differs(voxels("out.nrrd")),
                                                  records(header("out.nrrd", "nodule_attributes_from"),
                                                          "described.nodules.json"))),
    ("synthesize", "--guidance"): Flag("synthesize-described", ("--guidance", "1"), differs(voxels("out.nrrd"))),
    ("synthesize", "--progress"): Flag("synthesize", ("--progress", "json"), records(json_lines("step"), True)),
    ("synthesize", "--threads"): Flag("synthesize", ("--threads", "2", *STOP), threads(2)),
    # lung-mask
    ("lung-mask", "--output"): Flag("lung-mask", ("--output", "other.nii.gz"), differs(files)),
    ("lung-mask", "--preview"): Flag("lung-mask", ("--preview", "p.png"), differs(files)),
    # layout from-segmentation
    ("layout from-segmentation", "--output"): Flag("from-segmentation", ("--output", "other.nii.gz"), differs(files)),
    ("layout from-segmentation", "--reference"): Flag("from-segmentation", ("--reference", "{ct}"),
                                                      records(json_lines("right_lung_l"), True)),
    ("layout from-segmentation", "--lung-labels"): Flag("from-segmentation", ("--lung-labels", "10"),
                                                        differs(voxels("lay.nrrd"))),
    ("layout from-segmentation", "--nodule-labels"): Flag("from-segmentation", ("--nodule-labels", "11"),
                                                          differs(voxels("lay.nrrd"))),
    ("layout from-segmentation", "--exclude-labels"): Flag("from-segmentation", ("--exclude-labels", "12"),
                                                           differs(voxels("lay.nrrd"))),
    # add-nodule
    ("add-nodule", "--layout"): Flag("add-nodule", ("--layout", "{layout2}"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--output"): Flag("add-nodule", ("--output", "other.nii.gz"), differs(files)),
    ("add-nodule", "--center"): Flag("add-nodule", ("--center", "{lung_point2}"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--ras"): Flag("add-nodule", ("--center", "{lung_point_ras}", "--ras"),
                                  same(voxels("lay.nrrd"))),  # the RAS numbers of the default's LPS point
    ("add-nodule", "--diameter"): Flag("add-nodule", ("--diameter", "12"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--kinds"): Flag("add-nodule", ("--kinds", "ground-glass"), differs(text("lay.nodules.json"))),
    ("add-nodule", "--irregularity"): Flag("add-nodule", ("--irregularity", "0.8"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--nodule"): Flag("add-nodule", ("--nodule", "spiculation=5"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--prompt"): Flag("add-nodule", ("--prompt", "linear nodule"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--random"): Flag("add-nodule-random", ("--random", "3"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--diameter-range"): Flag("add-nodule-random", ("--diameter-range", "5", "6"),
                                             differs(voxels("lay.nrrd"))),
    ("add-nodule", "--seed"): Flag("add-nodule-random", ("--seed", "4"), differs(voxels("lay.nrrd"))),
    ("add-nodule", "--allow-outside-lung"): Flag("add-nodule", ("--center", "{body_point}", "--allow-outside-lung"),
                                                 differs(voxels("lay.nrrd"))),
    # demo
    ("demo", "--output"): Flag("demo", ("--output", "other"), differs(files)),
    ("demo", "--seed"): Flag("demo", ("--seed", "3"), all_of(differs(voxels("d/synthetic.nrrd")),
                                                             records(header("d/synthetic.nrrd", "seed"), "3"))),
    ("demo", "--device"): Flag("demo", ("--device", "cuda:7"), refused("cuda:7")),
    ("demo", "--progress"): Flag("demo", ("--progress", "json"), differs(stdout)),
    ("demo", "--threads"): Flag("demo", ("--threads", "2", *STOP), threads(2)),
    # generate
    ("generate", "--references"): Flag("generate", ("--references", "{refs2}"), differs(voxels(GEN_IMAGE))),
    ("generate", "--model"): Flag("generate", ("--model", "{tiny8_copy}"), records(manifest("model"), "copy-of-tiny8.pt")),
    ("generate", "--output"): Flag("generate", ("--output", "gen2"), differs(files)),
    ("generate", "--dataset-id"): Flag("generate", ("--dataset-id", "8"), differs(files)),
    ("generate", "--dataset-name"): Flag("generate", ("--dataset-name", "Other"), differs(files)),
    ("generate", "--variants"): Flag("generate", ("--variants", "2"), differs(files)),
    ("generate", "--seed"): Flag("generate", ("--seed", "9"), differs(voxels(GEN_IMAGE))),
    ("generate", "--sampler"): Flag("generate", ("--sampler", "ddim"), differs(voxels(GEN_IMAGE))),
    ("generate", "--steps"): Flag("generate", ("--steps", "1"), differs(voxels(GEN_IMAGE))),
    ("generate", "--variant"): Flag("generate-ddpm", ("--variant", "released"), differs(voxels(GEN_IMAGE))),
    ("generate", "--nodules"): Flag("generate", ("--nodules", "1"), differs(voxels(GEN_LABEL))),
    ("generate", "--diameter-range"): Flag("generate", ("--nodules", "1", "--diameter-range", "25", "30"),
                                           differs(voxels(GEN_LABEL))),
    ("generate", "--kinds"): Flag("generate", ("--nodules", "1", "--kinds", "ground-glass"), refused("ground-glass")),
    ("generate", "--batch"): Flag("generate", ("--batch", "1"), records(manifest("batch_rule"), "given")),
    ("generate", "--labels"): Flag("generate", ("--labels", "nodule"), differs(voxels(GEN_LABEL))),
    ("generate", "--shard"): Flag("generate", ("--shard", "1/2"), differs(files)),
    ("generate", "--device"): Flag("generate", ("--device", "cuda:7"), refused("cuda:7")),
    ("generate", "--progress"): Flag("generate", ("--progress", "json"), differs(stdout)),
    ("generate", "--threads"): Flag("generate", ("--threads", "2", *STOP), threads(2)),
    ("generate", "--attributes-from"): Flag("generate-attributes", ("--attributes-from", "texture=ground-glass"),
                                            all_of(differs(voxels(GEN_IMAGE)),
                                                   records(lambda run: manifest("attributes_from")(run) is not None,
                                                           True))),
    ("generate", "--guidance"): Flag("generate-described", ("--guidance", "1"),
                                     all_of(differs(voxels(GEN_IMAGE)), records(manifest("guidance"), 1.0))),
    ("generate", "--finalize"): Flag("generate", ("--finalize",), refused("no finished cases")),  # samples nothing
    # evaluate
    ("evaluate", "--output"): Flag("evaluate", ("--output", "rep2"), differs(files)),
    ("evaluate", "--real"): Flag("evaluate", ("--real", "{refs2}"), differs(report("distribution.n_real"))),
    ("evaluate", "--backbone-weights"): Flag("evaluate", ("--backbone-weights", "{backbone}"),
                                             differs(report("distribution.backbone"))),
    ("evaluate", "--backbone-depth"): Flag("evaluate", ("--backbone-depth", "18"), differs(report("distribution.backbone"))),
    ("evaluate", "--backbone-shortcut"): Flag("evaluate", ("--backbone-shortcut", "A"),
                                              differs(report("distribution.backbone"))),
    ("evaluate", "--backbone-seed"): Flag("evaluate", ("--backbone-seed", "3"), differs(report("distribution.backbone"))),
    ("evaluate", "--feature-size"): Flag("evaluate", ("--feature-size", "24"), differs(report("distribution.fid"))),
    ("evaluate", "--soft-tissue-hu"): Flag("evaluate", ("--soft-tissue-hu", "-100", "100"), differs(report("paired"))),
    ("evaluate", "--previews"): Flag("evaluate", ("--previews", "0"), differs(files)),
    ("evaluate", "--skip-damaged"): Flag("evaluate-damaged", ("--skip-damaged",),
                                         rescues),
    ("evaluate", "--device"): Flag("evaluate", ("--device", "cuda:7"), refused("cuda:7")),
    ("evaluate", "--threads"): Flag("evaluate", ("--threads", "2", *STOP), threads(2)),
    # train
    ("train", "--config"): Flag("train", ("--config", "{train_config}"), differs(weights("run/latest.pt"))),
    ("train", "--set"): Flag("train", ("--set", "lr=0.01"), differs(weights("run/latest.pt"))),
    ("train", "--data"): Flag("train", ("--data", "{prepared2}"), differs(weights("run/latest.pt"))),
    ("train", "--output"): Flag("train", ("--output", "run2"), differs(files)),
    ("train", "--steps"): Flag("train", ("--steps", "2"), differs(weights("run/latest.pt"))),
    ("train", "--batch-size"): Flag("train", ("--batch-size", "2"), differs(weights("run/latest.pt"))),
    ("train", "--init"): Flag("train", ("--init", "{tiny8}"), refused("profile")),
    ("train", "--resume"): "continues a run from its latest.pt; shown by training/test_run.py "
                           "test_killed_run_resumes_to_the_same_weights (same weights as an uninterrupted run)",
    ("train", "--device"): Flag("train", ("--device", "cuda:7"), refused("cuda:7")),
    ("train", "--bf16"): Flag("train", ("--bf16",), differs(weights("run/latest.pt"))),
    ("train", "--print-config"): Flag("train", ("--print-config",), all_of(differs(stdout), differs(files))),  # no run
    ("train", "--progress"): Flag("train", ("--progress", "json"), differs(stdout)),
    ("train", "--grad-checkpoint"): "gives the same loss and gradients by design, so no output differs; "
                                    "training/test_run.py test_gradient_checkpointing_gives_the_same_loss_and_gradients "
                                    "shows it is applied",
    ("train", "--threads"): Flag("train", ("--threads", "2", *STOP), threads(2)),
    # serve (a long-running server: shown against real server processes in Testing/engine/server/)
    ("serve", "--token-file"): "test_server_api.py: 401 without or with a wrong token, 200 with the file's",
    ("serve", "--port"): "Testing/serving.py starts every test server on a free port given with --port",
    ("serve", "--host"): "only the default 127.0.0.1 is tried, so that the tests stay on loopback",
    ("serve", "--work-dir"): "test_server_api.py: the killed-and-restarted server reopens the jobs of --work-dir",
    ("serve", "--device"): "test_server_api.py: /v1/health reports the --device cpu the test servers get",
    ("serve", "--max-queue"): "test_server_api.py: with --max-queue 2 the fourth job is refused with 503",
    ("serve", "--max-upload-mb"): "test_server_api.py: /v1/health reports it; larger uploads are refused with 413",
    ("serve", "--models"): "server/test_server_flags.py: /v1/models lists the folder's files",
    ("serve", "--keep-hours"): "server/test_server_flags.py: the 404 message gives the keep time",
    ("serve", "--threads"): "torch's CPU threads in the server process (the same _set_threads as synthesize "
                            "--threads, shown above); not visible over HTTP",
    # prepare
    ("prepare", "--input"): Flag("prepare", ("--input", "{cases2}"), differs(text("prep/manifest.json"))),
    ("prepare", "--output"): Flag("prepare", ("--output", "prep2"), differs(files)),
    ("prepare", "--profile"): Flag("prepare", ("--profile", "released-patch"), differs(text("prep/manifest.json"))),
    ("prepare", "--size"): Flag("prepare", ("--size", "24"), differs(text("prep/manifest.json"))),
    ("prepare", "--cond-channels"): Flag("prepare", ("--cond-channels", "1"), differs(text("prep/manifest.json"))),
    ("prepare", "--patch-spacing"): Flag("prepare", ("--profile", "released-patch", "--patch-spacing", "3"),
                                         differs(text("prep/manifest.json"))),
    ("prepare", "--val-fraction"): Flag("prepare", ("--val-fraction", "0.5"), differs(text("prep/manifest.json"))),
    ("prepare", "--seed"): Flag("prepare", ("--seed", "1", "--val-fraction", "0.5"), differs(text("prep/manifest.json"))),
    ("prepare", "--progress"): Flag("prepare", ("--progress", "json"), differs(stdout)),
}


def parser_flags(parser: argparse.ArgumentParser, command: str = "lungddpm") -> set[tuple[str, str]]:
    """Every (command, long flag) of a parser and its sub-commands, help left out."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= parser_flags(sub, name if command == "lungddpm" else f"{command} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found |= {(command, s) for s in action.option_strings if s.startswith("--")}
    return found


def test_every_flag_has_an_entry():
    flags = parser_flags(build_parser())
    assert not flags - FLAGS.keys(), f"flags without an entry in FLAGS: {sorted(flags - FLAGS.keys())}"
    assert not FLAGS.keys() - flags, f"entries for flags the parser no longer has: {sorted(FLAGS.keys() - flags)}"


def _groups(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """The leading words (command, positionals) and the [--flag, values...] groups of a command line."""
    start = next((n for n, word in enumerate(argv) if word.startswith("--")), len(argv))
    groups: list[list[str]] = []
    for word in argv[start:]:
        if word.startswith("--"):
            groups.append([word])
        else:
            groups[-1].append(word)
    return argv[:start], groups


def with_flag(base: list[str], extra: tuple[str, ...]) -> list[str]:
    """The base command line with the extra groups: a flag already there has its values replaced (or is REMOVEd)."""
    head, groups = _groups(base)
    for flag, *values in _groups(list(extra))[1]:
        if flag != "--set":  # --set repeats; any other flag is replaced
            groups = [g for g in groups if g[0] != flag]
        if values != [REMOVE]:
            groups.append([flag, *values])
    return head + [w for g in groups for w in g]


def _phantom(seed: int, nodules: int = 1):
    return make_phantom(phantom_grid((64, 64, 32), (5.0, 5.0, 9.0)), seed=seed, nodules=nodules)


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread_module) -> dict[str, str]:
    """The inputs of every scenario: small phantoms, masks, a label map, a sidecar, data sets, configs."""
    root = tmp_path_factory.mktemp("flags-data")
    ph, ph2 = _phantom(2), _phantom(3, nodules=2)
    d = {"tiny8": str(save_checkpoint(root / "tiny8.pt", random_model(image_size=8)))}  # 8³, T = 8
    d["ct"], d["layout"] = str(write_volume(ph.ct, root / "ct.nrrd")), str(write_volume(ph.layout, root / "layout.nrrd"))
    d["ct2"], d["layout2"] = (str(write_volume(ph2.ct, root / "ct2.nrrd")),
                              str(write_volume(ph2.layout, root / "layout2.nrrd")))
    lung = ph.layout.with_array((ph.layout.array >= LUNG).astype(np.uint8))
    d["lung"] = str(write_volume(lung, root / "lung.nrrd"))
    d["nodules"] = str(write_volume(ph.layout.with_array((ph.layout.array == NODULE).astype(np.uint8)),
                                    root / "nodules.nrrd"))
    seg = np.zeros(ph.layout.array.shape, np.uint8)  # lobes 10 / 11 / 12 (left-right halves, a slab), nodules 99
    half = ph.layout.array.shape[2] // 2
    seg[:, :, :half][ph.layout.array[:, :, :half] >= LUNG] = TOTALSEGMENTATOR_LABELS["lung_upper_lobe_left"]
    seg[:, :, half:][ph.layout.array[:, :, half:] >= LUNG] = TOTALSEGMENTATOR_LABELS["lung_lower_lobe_left"]
    seg[:4][seg[:4] > 0] = TOTALSEGMENTATOR_LABELS["lung_upper_lobe_right"]
    seg[ph.layout.array == NODULE] = 99
    d["seg"] = str(write_volume(ph.layout.with_array(seg), root / "seg.nrrd"))
    lung_kji = np.argwhere(ph.layout.array == LUNG)
    far = lung_kji[np.argmax(np.abs(lung_kji[:, 2] - half))]  # deep in one lung, far from the other
    points = [index_to_physical(ph.layout, kji[::-1]) for kji in (lung_kji[len(lung_kji) // 2], far)]
    d["lung_point"], d["lung_point2"] = (" ".join(f"{v:.2f}" for v in p) for p in points)
    x, y, z = points[0]
    d["lung_point_ras"] = f"{-x:.2f} {-y:.2f} {z:.2f}"
    body = np.argwhere((ph.layout.array == 0) & (ph.ct.array > -200))[0]  # soft tissue: in the body, not lung
    d["body_point"] = " ".join(f"{v:.2f}" for v in index_to_physical(ph.layout, body[::-1]))
    records = layout_records(ph.layout, {1: NoduleAttributes(texture=1, margin=2, spiculation=4)})
    d["sidecar"] = str(write_sidecar(root / "described.nrrd", records))
    (root / "copy-of-tiny8.pt").write_bytes(Path(d["tiny8"]).read_bytes())
    d["tiny8_copy"] = str(root / "copy-of-tiny8.pt")
    for name, phantom in (("refs", ph), ("refs2", ph2), ("refs0", _phantom(4, nodules=0))):
        write_volume(phantom.ct, root / name / "c0.nii.gz")
        write_volume(phantom.layout, root / name / "c0_layout.nii.gz")
        d[name] = str(root / name)
    d["dataset"] = _generated(root / "gen", [ph, ph2], d["tiny8"])
    d["damaged"] = _generated(root / "damaged", [ph, ph2], d["tiny8"])
    image = next(Path(d["damaged"], "imagesTr").glob("*.nii.gz"))
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    from lungddpm.evaluation.backbones import ResNet3D
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ResNet3D(10, "A").state_dict().items()}},
               root / "resnet_10.pth")
    d["backbone"] = str(root / "resnet_10.pth")
    for name, seeds in (("cases", (0, 1)), ("cases2", (2, 3))):
        for n in seeds:
            case = make_phantom(phantom_grid((64, 64, 32), (5.0, 5.0, 9.0)), seed=n, nodules=1)
            write_volume(case.ct, root / name / f"p{n}" / "ct.nrrd")
            write_volume(case.layout.with_array((case.layout.array == NODULE).astype(np.uint8)),
                         root / name / f"p{n}" / "nodules.nrrd")
        d[name] = str(root / name)
    for name in ("cases", "cases2"):
        prepare_dataset([root / name], root / f"prepared-{name}", size=8, val_fraction=0.0)
    d["prepared"], d["prepared2"] = str(root / "prepared-cases"), str(root / "prepared-cases2")
    (root / "train.toml").write_text("seed = 7\n")
    d["train_config"] = str(root / "train.toml")
    return d


def _generated(folder: Path, phantoms, model: str) -> str:
    """A data set of two cases made by `lungddpm generate` (one solver step)."""
    for n, phantom in enumerate(phantoms):
        write_volume(phantom.ct, folder / "refs" / f"c{n}.nii.gz")
        write_volume(phantom.layout, folder / "refs" / f"c{n}_layout.nii.gz")
    assert main(["generate", "--references", str(folder / "refs"), "--model", model, "--output", str(folder),
                 "--steps", "1", "--device", "cpu", "--dataset-id", "9", "--progress", "none"]) == 0
    return str(folder / "Dataset009_LungDDPMSynthetic")


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for the module's fixtures (the machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_DEFAULTS: dict[str, Run] = {}


def run_command(argv: list[str], folder: Path, capsys) -> Run:
    """Run `lungddpm argv` in this process inside folder; torch's thread count is restored afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    before_threads, before_dir = torch.get_num_threads(), os.getcwd()
    capsys.readouterr()
    os.chdir(folder)
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        rc = int(exit_.code or 0)
    finally:
        after = torch.get_num_threads()
        torch.set_num_threads(before_threads)
        os.chdir(before_dir)
    out, err = capsys.readouterr()
    return Run(rc, out, err, folder, after)


def _argv(words: list[str], data: dict[str, str]) -> list[str]:
    """A command line with {name} replaced by the data's paths (a multi-number value split into words)."""
    return [part for word in words for part in (word.format(**data).split() if "{" in word else [word])]


@pytest.mark.parametrize("entry", [k for k, v in FLAGS.items() if isinstance(v, Flag)], ids=" ".join)
def test_flag_changes_what_the_command_does(entry, data, tmp_path_factory, capsys):
    flag = FLAGS[entry]
    base = SCENARIOS[flag.scenario]
    if flag.scenario not in _DEFAULTS:
        _DEFAULTS[flag.scenario] = run_command(_argv(base, data), tmp_path_factory.mktemp(flag.scenario), capsys)
    default = _DEFAULTS[flag.scenario]
    argv = _argv(with_flag(base, flag.args), data)
    flagged = run_command(argv, tmp_path_factory.mktemp("flagged"), capsys)
    flag.check(default, flagged)
