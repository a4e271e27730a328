"""A synthesis job that runs on a `lungddpm serve` server: the local job's states, export and import, remote engine.

RemoteSynthesisJob is a SynthesisJob whose engine is the server: each variant's export is uploaded,
poll() asks the server for the step and ETA, a finished variant is downloaded into the job's work folder
and imported exactly as a local run's result, and cancel() cancels the server's job too. Every request
(upload, status, downloads) runs on a thread of its own, so that Slicer stays responsive while a large
CT is sent; poll() takes each one's answer when it has come.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
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


class _Call:
    """One request on a daemon thread; take() returns its result or raises its error once done()."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self.result = call()
        except BaseException as error:  # handed to the polling thread by take()
            self.error = error

    def done(self) -> bool:
        """Whether the request has ended."""
        return not self.thread.is_alive()

    def take(self) -> object:
        """The request's result; its exception if it failed."""
        if self.error is not None:
            raise self.error
        return self.result


class RemoteSynthesisJob(SynthesisJob):
    """Synthesise one variant per seed on a server; request.model_path is unused: `model` names the server's model."""

    def __init__(self, context: mrml.MrmlContext, request: SynthesisRequest, *, server: remote.Server, model: str,
                 work_dir: Path, log: Log | None = None, keep_files: bool = False, engine_dir: Path = Path()) -> None:
        # no local run: python is not used; engine_dir only for the torch-free attribute schema (attribute models)
        super().__init__(context, request, engine_dir=engine_dir, work_dir=work_dir, python="remote", log=log,
                         keep_files=keep_files)
        self.server, self.model = server, model
        self.job_id: str | None = None
        self._call: _Call | None = None
        self._on_answer: Callable[[object], None] | None = None
        self._last_poll = 0.0
        self._lock = threading.Lock()
        self._cancelled = False

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
        if self._nodules_json is not None:  # an attribute model: each nodule's tags, as the sidecar document itself
            options["nodules_json"] = json.loads(self._nodules_json.read_text())
            if r.guidance is not None:
                options["guidance"] = float(r.guidance)
        return options

    def _ask(self, call: Callable[[], object], on_answer: Callable[[object], None]) -> None:
        """Send a request on its own thread; on_answer gets its result in a later poll()."""
        self._call, self._on_answer = _Call(call), on_answer

    def _launch(self) -> None:
        """Start uploading the current variant's inputs and options."""
        seed = self.request.seeds[self._variant]
        self.step, self.total, self.eta_s, self._done, self.job_id = 0, 0, None, None, None
        self.log(f"Variant {self._variant + 1}/{len(self.request.seeds)} (seed {seed}): uploading to {self.server.url}")
        self._ask(lambda: self._submit(self.options(seed)), self._submitted)
        self.state = JobState.RUNNING

    def _submit(self, options: dict) -> str:
        """The upload (on its thread); a job cancelled while it was sent is cancelled on the server at once."""
        job_id = remote.submit(self.server, self._exported.reference_path, self._exported.layout_path, options)
        with self._lock:
            self.job_id, orphaned = job_id, self._cancelled
        if orphaned:
            remote.cancel(self.server, job_id)
        return job_id

    def _submitted(self, job_id: object) -> None:
        """The server took the variant."""
        self.log(f"Job {job_id} on {self.server.url}")

    def _read_engine(self) -> None:
        """Take the answer of the request in flight, or send the next one (a status at most every POLL_EVERY_S)."""
        if self._call is not None:
            if not self._call.done():
                return
            call, on_answer = self._call, self._on_answer
            self._call = self._on_answer = None
            with _as_engine_error():
                on_answer(call.take())
            return
        if time.monotonic() - self._last_poll >= POLL_EVERY_S:
            self._last_poll = time.monotonic()
            self._ask(lambda: remote.status(self.server, self.job_id), self._status)

    def _status(self, record: object) -> None:
        """Show the server's progress; download a finished variant."""
        self.step, self.total, self.eta_s = record["step"], record["total"], record["eta_s"]
        if record["state"] == "failed":
            raise EngineError(record["error"] or "the server's job failed")
        if record["state"] == "cancelled":
            raise EngineError("the job was cancelled on the server")
        if record["state"] == "done":
            self._ask(self._download, self._downloaded)

    def _download(self) -> tuple[engine.Done, str | None]:
        """Both files of the finished variant into the work folder, then the server's copy deleted (on its thread).

        Returns the files and, when the DELETE failed, why (logged by the polling thread: the log may be a widget).
        """
        seed = self.request.seeds[self._variant]
        image = remote.download(self.server, self.job_id, "image", self.work_dir / f"synthetic-seed{seed}.nrrd")
        labels = remote.download(self.server, self.job_id, "labels", self.work_dir / f"synthetic-seed{seed}_labels.nrrd")
        try:  # a finished job's DELETE removes its files from the server (else they go after its keep time)
            remote.cancel(self.server, self.job_id)
        except remote.RemoteError as error:
            return engine.Done(image, labels), f"The server kept job {self.job_id}'s files: {error}"
        return engine.Done(image, labels), None

    def _downloaded(self, answer: object) -> None:
        """Import the downloaded variant next."""
        self._done, note = answer
        if note:
            self.log(note)
        self.state = JobState.IMPORTING

    def cancel(self) -> None:
        """Cancel the server's job, also one still being uploaded (best effort: an unreachable server keeps it
        until its keep time), and clean up."""
        with self._lock:
            self._cancelled, job_id = True, self.job_id
        if self.active and job_id is not None:
            try:
                remote.cancel(self.server, job_id)
            except remote.RemoteError as error:
                self.log(f"The server's job could not be cancelled: {error}")
        super().cancel()
