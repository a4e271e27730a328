"""One device, one job at a time: a queue of checked jobs and the thread that runs them with synthesize().

A job runs the same ``synthesis.synthesize.synthesize`` as ``lungddpm synthesize``, so its result equals a
local run with the same settings. Its progress callback (called after every network pass) records the
step and ETA and ends a cancelled job there, so a running job stops within one network pass.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from lungddpm.errors import LungDDPMError
from lungddpm.server.checks import JobRequest
from lungddpm.server.store import IMAGE, STOPPED, Job, JobStore
from lungddpm.synthesis.synthesize import synthesize, write_result

log = logging.getLogger("lungddpm.server")


class JobCancelled(Exception):
    """Raised from the progress callback of a job that a client cancelled."""


class QueueFull(Exception):
    """The queue already holds --max-queue waiting jobs."""


class Worker:
    """The queue and its one worker thread; submit() and cancel() are safe from any thread."""

    def __init__(self, store: JobStore, request_of: Callable[[Job], JobRequest], device: str, max_queue: int) -> None:
        self.store, self.request_of, self.device, self.max_queue = store, request_of, device, max_queue
        self.waiting: collections.deque[str] = collections.deque()
        self.cancelled: set[str] = set()
        self.running: str | None = None
        self.condition = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="lungddpm-worker", daemon=True)
        self.thread.start()

    def check_room(self) -> None:
        """QueueFull when no more jobs can wait."""
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull

    def submit(self, job: Job) -> None:
        """Queue a recorded job; QueueFull when the queue is full."""
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job.id)
            self.condition.notify()
        log.info("job %s queued (%d waiting)", job.id, len(self.waiting))

    def cancel(self, job: Job) -> None:
        """Cancel a job: a waiting one at once, a running one at its next network pass."""
        with self.condition:
            if job.id in self.waiting:
                self.waiting.remove(job.id)
                self.store.finish(job, "cancelled")
                log.info("job %s cancelled while queued", job.id)
            elif job.id == self.running:
                self.cancelled.add(job.id)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the running job (failed: the server stopped) and the thread; waiting jobs fail at the next start."""
        with self.condition:
            self.stopping = True
            if self.running:
                self.cancelled.add(self.running)
            self.condition.notify_all()
        self.thread.join(timeout_s)

    def _loop(self) -> None:
        """Run queued jobs one after the other until stop()."""
        while True:
            with self.condition:
                while not self.waiting and not self.stopping:
                    self.condition.wait(timeout=60.0)
                    self.store.expire()
                if self.stopping:
                    return
                job_id = self.waiting.popleft()
                self.running = job_id
            job = self.store.get(job_id)
            try:
                if job is not None:
                    self._run(job)
            finally:
                with self.condition:
                    self.running = None
                    self.cancelled.discard(job_id)
            self.store.expire()

    def _run(self, job: Job) -> None:
        """Run one job to done, failed or cancelled."""
        job.state = "running"
        self.store.save(job)
        log.info("job %s running", job.id)
        start = time.perf_counter()

        def progress(step: int, total: int) -> None:
            elapsed = time.perf_counter() - start
            job.step, job.total = step, total
            job.eta_s = round(elapsed / step * (total - step), 1) if step else None
            if job.id in self.cancelled:
                raise JobCancelled

        folder = self.store.folder(job.id)
        try:
            request = self.request_of(job)
            reference, layout = (next(folder.glob(f"{name}.*")) for name in ("reference", "layout"))
            result = synthesize(reference, layout, request.model.path, device=self.device, progress=progress,
                                **request.kwargs)
            write_result(result, folder / IMAGE)
        except JobCancelled:
            if self.stopping:
                self.store.finish(job, "failed", STOPPED)
            else:
                self.store.finish(job, "cancelled")
            log.info("job %s stopped at step %d of %d", job.id, job.step, job.total)
        except LungDDPMError as error:
            self.store.finish(job, "failed", self.store.for_client(str(error), job.id))
            log.info("job %s failed: %s", job.id, job.error)
        except Exception as error:  # a bug: the job fails, the server keeps serving
            log.exception("job %s failed with an internal error", job.id)
            self.store.finish(job, "failed", f"internal error ({type(error).__name__}); see the server's log")
        else:
            self.store.finish(job, "done")
            log.info("job %s done in %.1f s", job.id, time.perf_counter() - start)
