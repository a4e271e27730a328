"""A synthesis job that runs on a `lungddpm serve` server: the local job's states, export and import, remote engine.

RemoteSynthesisJob is a SynthesisJob whose engine is the server: each variant's export is uploaded,
poll() asks the server for the step and ETA, a finished variant is downloaded into the job's work folder
and imported exactly as a local run's result, and cancel() cancels the server's job too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from . import engine, mrml, remote
from .jobs import EngineError, JobState, Log, SynthesisJob, SynthesisRequest

POLL_EVERY_S = 1.0  # at most one status request a second, however often the panel polls


@contextlib.contextmanager
def _as_engine_error() -> Iterator[None]:
    """A server's refusal or absence as EngineError: the job shows the message alone, as for a local engine error."""
    try:
        yield
    except remote.RemoteError as error:
        raise EngineError(str(error)) from None


class RemoteSynthesisJob(SynthesisJob):
    """Synthesise one variant per seed on a server; request.model_path is unused: `model` names the server's model."""

    def __init__(self, context: mrml.MrmlContext, request: SynthesisRequest, *, server: remote.Server, model: str,
                 work_dir: Path, log: Log | None = None, keep_files: bool = False) -> None:
        super().__init__(context, request, engine_dir=Path(), work_dir=work_dir, python="remote", log=log,
                         keep_files=keep_files)  # no local engine: engine_dir and python are not used
        self.server, self.model = server, model
        self.job_id: str | None = None
        self._last_poll = 0.0

    def options(self, seed: int) -> dict:
        """The job options sent for one variant (the server picks its own device)."""
        r = self.request
        options = {"model": self.model, "seed": seed, "sampler": r.sampler, "precision": r.precision}
        if r.sampler == "ddpm":
            options["variant"] = r.aas_variant
        elif r.steps is not None:
            options["steps"] = r.steps
        if r.patch_spacing_mm is not None:
            options["patch_spacing"] = float(r.patch_spacing_mm)
        return options

    def _launch(self) -> None:
        """Upload the current variant's inputs and options to the server."""
        seed = self.request.seeds[self._variant]
        self.step, self.total, self.eta_s, self._done = 0, 0, None, None
        with _as_engine_error():
            self.job_id = remote.submit(self.server, self._exported.reference_path, self._exported.layout_path,
                                        self.options(seed))
        self.log(f"Variant {self._variant + 1}/{len(self.request.seeds)} (seed {seed}): job {self.job_id} on "
                 f"{self.server.url}")
        self.state = JobState.RUNNING

    def _read_engine(self) -> None:
        """Ask the server how the job stands; download a finished variant and move to IMPORTING."""
        if time.monotonic() - self._last_poll < POLL_EVERY_S:
            return
        self._last_poll = time.monotonic()
        with _as_engine_error():
            self._check_server_job()

    def _check_server_job(self) -> None:
        """_read_engine's body: progress, then the files of a finished job."""
        record = remote.status(self.server, self.job_id)
        self.step, self.total, self.eta_s = record["step"], record["total"], record["eta_s"]
        if record["state"] == "failed":
            raise EngineError(record["error"] or "the server's job failed")
        if record["state"] == "cancelled":
            raise EngineError("the job was cancelled on the server")
        if record["state"] != "done":
            return
        seed = self.request.seeds[self._variant]
        image = remote.download(self.server, self.job_id, "image", self.work_dir / f"synthetic-seed{seed}.nrrd")
        labels = remote.download(self.server, self.job_id, "labels", self.work_dir / f"synthetic-seed{seed}_labels.nrrd")
        try:  # a finished job's DELETE removes its files from the server (else they go after its keep time)
            remote.cancel(self.server, self.job_id)
        except remote.RemoteError as error:
            self.log(f"The server kept job {self.job_id}'s files: {error}")
        self._done = engine.Done(image, labels)
        self.state = JobState.IMPORTING

    def cancel(self) -> None:
        """Cancel the server's job (best effort: an unreachable server keeps it until its keep time) and clean up."""
        if self.active and self.job_id is not None:
            try:
                remote.cancel(self.server, self.job_id)
            except remote.RemoteError as error:
                self.log(f"The server's job could not be cancelled: {error}")
        super().cancel()
