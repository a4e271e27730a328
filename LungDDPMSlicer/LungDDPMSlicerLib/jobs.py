"""Engine jobs on MRML data, Qt-free: a pollable multi-variant synthesis and blocking lung-mask / nodule helpers.

Each job writes its inputs into a work folder it owns, runs the engine as a subprocess and deletes the folder
when it ends (success, failure or cancel) unless asked to keep it. Nothing in the scene changes until a
variant's result is imported; a failed import removes the nodes it had created.
"""

from __future__ import annotations

import enum
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import engine, mrml, nodule_attributes, panel
from .geometry import GeometryError, lps_geometry_from_ijk_to_ras, ras_to_lps
from .process import STDERR, BackgroundProcess
from .worker import EngineWorker, OneShotRunner

LUNG_COLOR = (0.85, 0.66, 0.56)
NODULE_COLOR = (0.90, 0.25, 0.20)
# Segment tags of an automatic lung segment, from the engine's lung-mask report (report key -> tag).
LUNG_REPORT_TAGS = {"lung_volume_l": "LungDDPM.lung_volume_l", "right_lung_l": "LungDDPM.right_lung_l",
                    "left_lung_l": "LungDDPM.left_lung_l", "left_fraction": "LungDDPM.left_fraction",
                    "warnings": "LungDDPM.lung_mask_warnings"}
WARNING_SEPARATOR = "\n"
Log = Callable[[str], None]


class EngineError(RuntimeError):
    """The engine stopped with an error; the message is the engine's own one-line explanation."""


class JobState(enum.Enum):
    """Where a synthesis job stands; the widget maps these to its buttons and labels."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    IMPORTING = "importing"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DONE = "done"


@dataclass
class SynthesisRequest:
    """What to synthesise: inputs in the scene, the checkpoint file, one seed per variant, and engine options."""

    reference_volume: object
    segmentation_node: object
    lung_segments: str | Sequence[str]  # one segment ID, or several (e.g. five lobes) whose union is the lung
    nodule_segment_ids: Sequence[str]
    model_path: Path
    seeds: Sequence[int]
    device: str = "auto"
    sampler: str = engine.DEFAULT_SAMPLER
    steps: int | None = None  # solvers only; None: the engine's default
    aas_variant: str = "paper"  # ddpm only
    precision: str = engine.DEFAULT_PRECISION  # auto: what the engine picks for the device it runs on
    patch_spacing_mm: float | None = None  # Lung-DDPM+ models only; None: the model's own
    model_attributes: Sequence[str] = ()  # the attributes the model takes (checkpoint_info); () sends none
    guidance: float | None = None  # attribute models only; None: the model's default


@dataclass
class SynthesisOutput:
    """One imported variant: the synthetic CT node and the segmentation of its layout."""

    seed: int
    volume_node: object
    segmentation_node: object


def synthetic_names(reference_name: str, seed: int) -> tuple[str, str]:
    """Node names of a variant: '<CT> synthetic (seed N)' and '<CT> synthetic layout (seed N)'."""
    return f"{reference_name} synthetic (seed {seed})", f"{reference_name} synthetic layout (seed {seed})"


class SynthesisJob:
    """Synthesise one variant per seed in turn; drive it with start() and then poll() until it is no longer active.

    States: STARTING (export) -> RUNNING (engine) -> IMPORTING (new nodes) -> RUNNING (next seed) ... -> DONE;
    FAILED or CANCELLED end it early.
    """

    def __init__(self, context: mrml.MrmlContext, request: SynthesisRequest, *, engine_dir: Path, work_dir: Path,
                 python: str | None = None, log: Log | None = None, keep_files: bool = False,
                 worker: EngineWorker | None = None) -> None:
        """worker: a long-lived engine (models stay loaded between jobs); None: one engine process per variant."""
        if not request.seeds:
            raise ValueError("a synthesis needs at least one seed")
        engine.check_options(request.device, request.sampler, request.steps, request.aas_variant, request.precision,
                             request.patch_spacing_mm)
        self.context, self.request = context, request
        self.engine_dir, self.work_dir = engine_dir, Path(work_dir)
        self.python = python or engine.python_executable()
        self.log = log or logging.info
        self.keep_files = keep_files
        self.state = JobState.IDLE
        self.error = ""
        self.outputs: list[SynthesisOutput] = []
        self.step, self.total, self.eta_s = 0, 0, None
        self.variant_seconds: list[float] = []  # wall time of each finished variant, engine start to its output
        self._variant = 0
        self._started = 0.0
        self._exported: mrml.LayoutExport | None = None
        self.runner: EngineWorker | OneShotRunner = worker if worker is not None else OneShotRunner()
        self._running = False  # whether the runner is busy with a variant of this job
        self._done: engine.Done | None = None
        self._nodules_json: Path | None = None

    @property
    def active(self) -> bool:
        """Whether the job is starting, running, importing or cancelling."""
        return self.state in (JobState.STARTING, JobState.RUNNING, JobState.IMPORTING, JobState.CANCELLING)

    @property
    def variant(self) -> int:
        """The 0-based index of the variant being made."""
        return self._variant

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1] over all variants."""
        within = self.step / self.total if self.total else 0.0
        return min(1.0, (self._variant + within) / len(self.request.seeds))

    def start(self) -> None:
        """Export the inputs and launch the first variant; a problem sets FAILED with a message."""
        self.state = JobState.STARTING
        self._guard(self._start)

    def _start(self) -> None:
        """start()'s body."""
        r = self.request
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._exported = mrml.export_layout(self.context, r.reference_volume, r.segmentation_node, r.lung_segments,
                                            list(r.nodule_segment_ids), self.work_dir)
        self.log(f"Exported {r.reference_volume.GetName()!r} and the layout (lung {self._exported.lung.name!r}, "
                 f"{len(self._exported.nodules)} nodule segment(s)) to {self.work_dir}")
        if r.model_attributes:
            self._nodules_json = self._write_sidecar()
        self._launch()

    def _write_sidecar(self) -> Path | None:
        """The sidecar of the nodule tags the model takes (None: no nodule has one); the others are logged once."""
        r = self.request
        fields = list(nodule_attributes.schema(self.engine_dir).BY_FIELD)
        tagged = [nodule_attributes.segment_attributes(r.segmentation_node, sid, fields) for sid in r.nodule_segment_ids]
        sent, left_out = panel.synthesis_attributes(tagged, r.model_attributes)
        if left_out:
            self.log(panel.left_out_message(left_out, nodule_attributes.shape_fields(self.engine_dir), r.model_path.name))
        described = [(n.name, n.mask, values) for n, values in zip(self._exported.nodules, sent)]
        return nodule_attributes.write_nodule_sidecar(self.engine_dir, self._exported.layout_path, described)

    def _launch(self) -> None:
        """Start the engine for the current variant."""
        r, seed = self.request, self.request.seeds[self._variant]
        command = engine.synthesize_command(self.python, self._exported.reference_path, self._exported.layout_path,
                                            r.model_path, self.work_dir / f"synthetic-seed{seed}.nrrd", seed=seed,
                                            device=r.device, sampler=r.sampler, steps=r.steps, variant=r.aas_variant,
                                            precision=r.precision, patch_spacing_mm=r.patch_spacing_mm,
                                            nodules_json=self._nodules_json,
                                            guidance=r.guidance if r.model_attributes else None)
        self.step, self.total, self.eta_s, self._done = 0, 0, None, None
        self.log(f"Variant {self._variant + 1}/{len(r.seeds)} (seed {seed}): " + " ".join(command))
        self._started = time.monotonic()
        self.runner.run(command, engine.engine_environment(self.engine_dir, r.device))
        self._running = True
        self.state = JobState.RUNNING

    def poll(self) -> None:
        """Read the engine's output; a variant whose engine finished is imported on the next call."""
        if self.state is JobState.RUNNING:
            self._guard(self._read_engine)
        elif self.state is JobState.IMPORTING:
            self._guard(self._import_variant)

    def _read_engine(self) -> None:
        """Take progress and log lines; when the engine has exited, check it and move to IMPORTING."""
        for stream, line in self.runner.read_lines():
            record = engine.parse_progress_line(line) if stream != STDERR else None
            if isinstance(record, engine.StepProgress):
                self.step, self.total, self.eta_s = record.step, record.total, record.eta_s
            elif isinstance(record, engine.Done):
                self._done = record
            elif line.strip():
                self.log(line)
        status = self.runner.exit_status()
        if status is None:
            return
        self._running = False
        if status != 0:
            raise EngineError(engine.engine_error_message(self.runner.error_lines(), status))
        if self._done is None:
            raise EngineError("the engine finished without reporting its output files")
        self.variant_seconds.append(time.monotonic() - self._started)
        self.log(f"Variant {self._variant + 1} took {self.variant_seconds[-1]:.1f} s in the engine")
        self.state = JobState.IMPORTING

    def _import_variant(self) -> None:
        """Import the finished variant, then start the next one or finish."""
        self.outputs.append(self._import(self.request.seeds[self._variant], self._done))
        self._variant += 1
        if self._variant < len(self.request.seeds):
            self._launch()
        else:
            self.state = JobState.DONE
            self._cleanup()

    def _import(self, seed: int, done: engine.Done) -> SynthesisOutput:
        """Add the variant's volume and layout segmentation to the scene beside the reference and show it."""
        reference = self.request.reference_volume
        volume_name, layout_name = synthetic_names(reference.GetName(), seed)
        created = []
        try:
            volume = mrml.import_synthetic_volume(self.context, done.image, reference, volume_name)
            created.append(volume)
            labels, geometry, _ = mrml.read_image(done.labels)
            mrml.check_on_reference_grid(labels, geometry, reference, done.labels)
            segments = mrml.layout_segments(labels, self._exported)
            segmentation = mrml.create_segmentation(self.context, reference, layout_name, segments)
            created.append(segmentation)
            segmentation.SetAttribute(mrml.ATTRIBUTE_PREFIX + "SYNTHETIC", "true")
            segmentation.SetAttribute(mrml.ATTRIBUTE_PREFIX + "synthetic_volume", volume.GetID())
            for node in created:
                mrml.place_beside(self.context, node, reference)
        except Exception:
            for node in created:
                self.context.scene.RemoveNode(node)
            raise
        mrml.show_volume(self.context, volume)
        self.log(f"Imported {volume_name!r} and {layout_name!r}")
        return SynthesisOutput(seed, volume, segmentation)

    def cancel(self) -> None:
        """Kill the engine and all its children and delete the work folder; imported variants stay."""
        if not self.active:
            return
        self.state = JobState.CANCELLING
        self.runner.kill()
        self._cleanup()
        self.state = JobState.CANCELLED
        self.log("Cancelled")

    def _guard(self, action: Callable[[], None]) -> None:
        """Run a step; on an error stop the engine, clean up, and record FAILED with a readable message."""
        try:
            action()
        except Exception as error:  # every failure must end in FAILED with a message, never in a stuck state
            known = (mrml.ExportError, GeometryError, EngineError, engine.EngineNotFoundError, OSError,
                     nodule_attributes.NoduleAttributeError)
            self.error = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
            if not isinstance(error, known):
                logging.exception("LungDDPM synthesis failed")
            if self._running:  # the engine is still at this variant: stop it (a worker restarts on the next job)
                self.runner.kill()
                self._running = False
            self._cleanup()
            self.state = JobState.FAILED
            self.log(f"Failed: {self.error}")

    def _cleanup(self) -> None:
        """Delete the work folder unless keep_files was asked for."""
        if self.keep_files:
            self.log(f"Temporary files kept in {self.work_dir}")
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def run_to_end(job: SynthesisJob, poll_s: float = 0.2) -> list[SynthesisOutput]:
    """Start a job and poll it until it ends (for scripts and tests); EngineError with the message if it failed."""
    job.start()
    while job.active:
        job.poll()
        time.sleep(poll_s)
    if job.state is JobState.FAILED:
        raise EngineError(job.error)
    return job.outputs


def run_engine(command: Sequence[str], engine_dir: Path, timeout_s: float | None = None) -> list[str]:
    """Run a short engine command to its end; its stdout lines, or EngineError with the engine's message."""
    process = BackgroundProcess(command, env=engine.engine_environment(engine_dir, "cpu"))
    process.start()
    try:
        returncode = process.wait(timeout_s)
    except TimeoutError:
        process.kill_tree()
        raise EngineError(f"the engine did not finish within {timeout_s} s") from None
    lines = process.read_lines()
    if returncode != 0:
        raise EngineError(engine.engine_error_message(process.stderr_lines, returncode))
    return [line for stream, line in lines if stream != STDERR]


def create_lung_segment(context: mrml.MrmlContext, reference_volume: object, segmentation_node: object, *,
                        engine_dir: Path, work_dir: Path, python: str | None = None, name: str = "lung") -> str:
    """Run the engine's automatic lung segmentation on the CT and add it as a segment; returns the segment ID.

    The engine's report goes into the segment's tags: each lung's volume, the left lung's share and the
    warnings (LUNG_REPORT_TAGS; lung_mask_warnings reads them back).
    """
    python = python or engine.python_executable()
    try:
        reference = mrml.write_volume_node(reference_volume, Path(work_dir) / "reference.nrrd")
        output = Path(work_dir) / "lung.nrrd"
        report = engine.parse_lung_report(run_engine(engine.lung_mask_command(python, reference, output), engine_dir))
        mask, geometry, _ = mrml.read_image(output)
        mrml.check_on_reference_grid(mask, geometry, reference_volume, output)
        tags = {tag: (WARNING_SEPARATOR.join(report[key]) if key == "warnings" else f"{report[key]:g}")
                for key, tag in LUNG_REPORT_TAGS.items()}
        return mrml.add_segment(segmentation_node, reference_volume, mrml.SegmentData(name, mask > 0, LUNG_COLOR, tags))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def lung_mask_warnings(segmentation_node: object, segment_id: str) -> list[str]:
    """The warnings the engine gave for an automatic lung segment (none for other segments)."""
    text = mrml.segment_tag(segmentation_node, segment_id, LUNG_REPORT_TAGS["warnings"])
    return text.split(WARNING_SEPARATOR) if text else []


def next_nodule_name(segmentation_node: object) -> str:
    """'nodule N' with the smallest N not yet used as a segment name."""
    segmentation = segmentation_node.GetSegmentation()
    names = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
    number = 1
    while f"nodule {number}" in names:
        number += 1
    return f"nodule {number}"


def add_nodule_segment(context: mrml.MrmlContext, reference_volume: object, segmentation_node: object,
                       lung_segments: str | Sequence[str], center_world_ras: Sequence[float], diameter_mm: float, *,
                       irregularity: float, engine_dir: Path, work_dir: Path, attributes: dict[str, float] | None = None,
                       python: str | None = None, seed: int = 0) -> str:
    """Add a parametric nodule (the engine's add-nodule) centred at a world RAS point in or at the lung segment(s).

    attributes: the nodule's known characteristics by field (LIDC codes), kept as its segment's tags.
    """
    python = python or engine.python_executable()
    try:
        lung = mrml.segment_mask(context, segmentation_node, lung_segments, reference_volume)
        geometry = lps_geometry_from_ijk_to_ras(mrml.ijk_to_ras(reference_volume))
        layout = mrml.write_image(lung.astype(np.uint8), geometry, Path(work_dir) / "lung.nrrd")
        output = Path(work_dir) / "with-nodule.nrrd"
        center_lps = ras_to_lps(mrml.world_to_volume_ras(center_world_ras, reference_volume))
        run_engine(engine.add_nodule_command(python, layout, output, center_lps, diameter_mm, irregularity, seed,
                                             attributes), engine_dir)
        labels, out_geometry, _ = mrml.read_image(output)
        mrml.check_on_reference_grid(labels, out_geometry, reference_volume, output)
        lobes = {} if "lobulation" in (attributes or {}) else {"LungDDPM.irregularity": f"{irregularity:g}"}
        tags = {"LungDDPM.diameter_mm": f"{diameter_mm:g}", **lobes, **nodule_attributes.attribute_tags(attributes or {})}
        segment = mrml.SegmentData(next_nodule_name(segmentation_node), labels == mrml.NODULE, NODULE_COLOR, tags)
        return mrml.add_segment(segmentation_node, reference_volume, segment)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
