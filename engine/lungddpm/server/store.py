"""Where jobs live: one folder per job under the server's work folder, its record in job.json, results kept a set time.

``<work>/jobs/<id>/``: ``job.json`` (state, settings, times, error), the uploaded ``reference.*`` and
``layout.*`` while the job waits or runs, then ``image.nrrd`` and ``image_labels.nrrd`` when it is done.
A folder without ``job.json`` is an upload that never finished. Opening a store after a crash or restart
marks unfinished jobs failed and deletes everything of theirs but the record; finished jobs' folders are
deleted once they are older than the keep time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lungddpm.io.atomic import remove_temporaries, write_text

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
RECORD = "job.json"
IMAGE, LABELS = "image.nrrd", "image_labels.nrrd"  # write_result's names for an output image.nrrd
RESTARTED = "the server restarted before the job finished; submit it again"
STOPPED = "the server stopped before the job finished; submit it again when it is back"
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Job:
    """A job's record: what is kept in job.json, plus its live progress (step, total, eta_s) in memory."""

    id: str
    options: dict
    state: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None

    def status(self) -> dict:
        """The job as GET /v1/jobs/{id} returns it."""
        return {"id": self.id, "state": self.state, "step": self.step, "total": self.total, "eta_s": self.eta_s,
                "error": self.error}


class JobStore:
    """The job folders of one server: new folders, records, results, expiry and recovery after a restart."""

    def __init__(self, work_dir: Path, keep_s: float) -> None:
        self.root = Path(work_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_s = keep_s
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self._recover()

    def new_folder(self) -> tuple[str, Path]:
        """A new job id (never from the client) and its empty folder."""
        job_id = secrets.token_hex(16)
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def folder(self, job_id: str) -> Path:
        """The folder of a job id."""
        return self.root / job_id

    def for_client(self, message: str, job_id: str) -> str:
        """An error message on one line, a job's files named without the server's folders ('reference.nrrd: ...')."""
        return " ".join(message.replace(f"{self.folder(job_id)}{os.sep}", "").split())

    def get(self, job_id: str) -> Job | None:
        """The job with that id, or None (ids that are not ours included)."""
        if not _ID.fullmatch(job_id):
            return None
        with self.lock:
            return self.jobs.get(job_id)

    def add(self, job: Job) -> None:
        """Record a new job (its folder holds its uploads)."""
        with self.lock:
            self.jobs[job.id] = job
        self.save(job)

    def save(self, job: Job) -> None:
        """Write the job's record (atomically)."""
        record = {k: v for k, v in asdict(job).items() if k not in ("step", "total", "eta_s")}
        write_text(self.folder(job.id) / RECORD, json.dumps(record))

    def finish(self, job: Job, state: str, error: str | None = None) -> None:
        """Move a job to a final state; its uploads are deleted (results stay when done)."""
        job.state, job.error, job.finished = state, error, time.time()
        self.save(job)
        self._delete_files(job.id, keep=(RECORD, IMAGE, LABELS) if state == "done" else (RECORD,))

    def remove(self, job_id: str) -> None:
        """Forget a job and delete its folder."""
        with self.lock:
            self.jobs.pop(job_id, None)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def expire(self, now: float | None = None) -> list[str]:
        """Delete finished jobs older than the keep time; their ids."""
        now = time.time() if now is None else now
        with self.lock:
            old = [j.id for j in self.jobs.values() if j.finished is not None and now - j.finished > self.keep_s]
        for job_id in old:
            self.remove(job_id)
        return old

    def _delete_files(self, job_id: str, keep: tuple[str, ...]) -> None:
        """Delete every file of a job's folder but those named in keep."""
        for path in self.folder(job_id).iterdir():
            if path.name not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Load the records left by an earlier run: unfinished jobs become failed, unfinished uploads go."""
        remove_temporaries(self.root)
        for folder in sorted(self.root.iterdir()):
            record = folder / RECORD
            if not (_ID.fullmatch(folder.name) and record.is_file()):
                shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
                continue
            try:
                job = Job(**json.loads(record.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.jobs[job.id] = job
            if job.state not in FINAL:
                self.finish(job, "failed", RESTARTED)
        self.expire()
