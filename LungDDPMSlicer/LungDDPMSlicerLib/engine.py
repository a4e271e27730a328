"""The `lungddpm` engine as a subprocess: where it is, how to call it, and how to read what it prints."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ERROR_PREFIX = "lungddpm: error: "
DEVICES = ("auto", "cuda", "mps", "cpu")
# Mirrors of lungddpm.sampling.options.SAMPLERS / DEFAULT_SAMPLER / DEFAULT_SOLVER_STEPS and
# lungddpm.runtime.precision.PRECISION_CHOICES / AUTO (Slicer's process never imports the engine's torch modules;
# Testing/slicer checks that they agree). Panel order: default first.
SAMPLERS = ("dpmpp2m", "dpmpp3m", "ddim", "ddpm")
DEFAULT_SAMPLER = "dpmpp2m"
DEFAULT_SOLVER_STEPS = 3
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: the engine's fastest measured path for the device
DEFAULT_PRECISION = "auto"


class EngineNotFoundError(RuntimeError):
    """The lungddpm package is neither bundled beside the module nor in the source tree."""


@dataclass(frozen=True)
class StepProgress:
    """One sampling step reported by `--progress json`."""

    step: int
    total: int
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class Done:
    """The final record of `lungddpm synthesize --progress json`: the files written."""

    image: Path
    labels: Path


def find_engine_dir(module_dir: Path) -> Path:
    """The folder to put on PYTHONPATH so that `import lungddpm` finds the engine.

    An installed extension bundles `lungddpm/` beside the module's script; a source checkout has it in
    `<repository>/engine/`.
    """
    for candidate in (module_dir, module_dir.parent / "engine"):
        if (candidate / "lungddpm" / "__init__.py").is_file():
            return candidate
    raise EngineNotFoundError(f"the lungddpm engine was found neither in {module_dir} (installed extension) nor in "
                              f"{module_dir.parent / 'engine'} (source tree); rebuild or reinstall the extension")


def python_executable() -> str:
    """Slicer's Python interpreter (PythonSlicer) when running in Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_environment(engine_dir: Path, device: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The subprocess environment: the engine on PYTHONPATH, unbuffered output, no CUDA GPU when device is cpu."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def check_options(device: str, sampler: str, steps: int | None, variant: str, precision: str,
                  patch_spacing_mm: float | None) -> None:
    """Raise ValueError naming the option and the fix when a synthesis option is one the engine would refuse."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {SAMPLERS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 runs only on a CUDA GPU; on the CPU choose precision bf16 or fp32")
    if sampler != "ddpm" and variant != "paper":
        raise ValueError(f"the {variant!r} AAS variant exists only for the ddpm sampler; choose ddpm or variant 'paper'")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps}); None uses the engine's default")
    if patch_spacing_mm is not None and not patch_spacing_mm > 0:
        raise ValueError(f"patch spacing must be a positive voxel size in mm (got {patch_spacing_mm}); None uses the model's")


def synthesize_command(python: str, reference: Path, layout: Path, model: Path, output: Path, *, seed: int,
                       device: str, sampler: str = DEFAULT_SAMPLER, steps: int | None = None, variant: str = "paper",
                       precision: str = DEFAULT_PRECISION, patch_spacing_mm: float | None = None,
                       nodules_json: Path | None = None, guidance: float | None = None) -> list[str]:
    """The `python -m lungddpm synthesize ... --progress json` command line.

    `--steps` goes only with the few-step solvers (None: the engine's default) and `--variant` only with ddpm,
    which always runs all of the model's steps; `--patch-spacing` only when given (Lung-DDPM+ models);
    `--nodules-json` (per-nodule attributes) and `--guidance` only when given (attribute models).
    """
    check_options(device, sampler, steps, variant, precision, patch_spacing_mm)
    command = [python, "-m", "lungddpm", "synthesize", "--reference", str(reference), "--layout", str(layout),
               "--model", str(model), "--output", str(output), "--seed", str(seed), "--device", device,
               "--sampler", sampler, "--precision", precision, "--progress", "json"]
    if sampler == "ddpm":
        command += ["--variant", variant]
    elif steps is not None:
        command += ["--steps", str(steps)]
    if patch_spacing_mm is not None:
        command += ["--patch-spacing", repr(float(patch_spacing_mm))]
    if nodules_json is not None:
        command += ["--nodules-json", str(nodules_json)]
    if guidance is not None:
        command += ["--guidance", repr(float(guidance))]
    return command


def lung_mask_command(python: str, reference: Path, output: Path) -> list[str]:
    """The `python -m lungddpm lung-mask` command line."""
    return [python, "-m", "lungddpm", "lung-mask", str(reference), "--output", str(output)]


def parse_lung_report(stdout_lines: Sequence[str]) -> dict:
    """The record `lungddpm lung-mask` prints: output, lung_volume_l, right/left_lung_l, left_fraction, warnings."""
    for line in reversed(stdout_lines):
        text = line.strip()
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "lung_volume_l" in record:
                return record
    raise ValueError("the engine's lung-mask printed no report (lung_volume_l); update the bundled engine")


def add_nodule_command(python: str, layout: Path, output: Path, center_lps: Sequence[float], diameter_mm: float,
                       irregularity: float, seed: int, attributes: dict[str, float] | None = None) -> list[str]:
    """The `python -m lungddpm add-nodule` command line (centre in LPS mm).

    attributes (LIDC codes by field) go as --nodule, so the engine paints the outline they ask for (sphericity,
    spiculation, lobulation); a lobulation sets the lobes itself, so --irregularity is then left out. The module
    keeps the attributes in the segment's tags and sends them with the synthesis (nodule_attributes); the
    layout's sidecar that add-nodule writes is not used.
    """
    attributes = attributes or {}
    command = [python, "-m", "lungddpm", "add-nodule", "--layout", str(layout), "--output", str(output),
               "--center", *(repr(float(v)) for v in center_lps), "--diameter", repr(float(diameter_mm)),
               "--seed", str(seed)]
    if "lobulation" not in attributes:
        command += ["--irregularity", repr(float(irregularity))]
    if attributes:
        command += ["--nodule", ", ".join(f"{name}={value:g}" for name, value in sorted(attributes.items()))]
    return command


def json_line(line: str) -> dict | None:
    """A JSON object printed on one stdout line, else None."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def parse_progress_line(line: str) -> StepProgress | Done | None:
    """A progress or completion record from one stdout line; None for any other line (log it as text)."""
    record = json_line(line)
    if record is None:
        return None
    if record.get("event") == "done" and "image" in record and "labels" in record:
        return Done(Path(record["image"]), Path(record["labels"]))
    if isinstance(record.get("step"), int) and isinstance(record.get("total"), int) and record["total"] > 0:
        eta = record.get("eta_s")
        return StepProgress(record["step"], record["total"], float(record.get("elapsed_s") or 0.0),
                            None if eta is None else float(eta))
    return None


def engine_error_message(stderr_lines: Sequence[str], returncode: int) -> str:
    """The engine's one-line error ("lungddpm: error: ..." without the prefix), or the last stderr line.

    A crash (a traceback) gives its last line, which names the exception; nothing at all gives the exit status.
    """
    for line in reversed(stderr_lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):].strip()
    for line in reversed(stderr_lines):
        if line.strip():
            return f"the engine stopped with exit status {returncode}: {line.strip()}"
    return f"the engine stopped with exit status {returncode} and printed no error"
