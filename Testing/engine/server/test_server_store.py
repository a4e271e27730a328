"""The server's job folders, keep time, recovery after a crash, and its token file: real folders and files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lungddpm.errors import ConfigError
from lungddpm.server.auth import authorized, read_token
from lungddpm.server.store import IMAGE, LABELS, RECORD, RESTARTED, Job, JobStore


def test_finished_jobs_are_kept_for_the_keep_time_then_deleted(tmp_path):
    store = JobStore(tmp_path, keep_s=60)
    job_id, folder = store.new_folder()
    for name in ("reference.nrrd", "layout.nrrd", IMAGE, LABELS):
        (folder / name).write_bytes(b"x")
    job = Job(job_id, {"model": "demo"})
    store.add(job)
    store.finish(job, "done")
    assert sorted(p.name for p in folder.iterdir()) == sorted([RECORD, IMAGE, LABELS])  # the uploads go at the end
    assert store.expire(now=job.finished + 59) == [] and folder.is_dir()
    assert store.expire(now=job.finished + 61) == [job_id] and not folder.exists() and store.get(job_id) is None


def test_reopening_after_a_crash_fails_unfinished_jobs_and_removes_what_they_left(tmp_path):
    store = JobStore(tmp_path, keep_s=3600)
    running_id, running = store.new_folder()
    store.add(Job(running_id, {}, state="running"))
    (running / "reference.nrrd").write_bytes(b"x")
    (running / ".image.nrrd.tmp-0123abcd.nrrd").write_bytes(b"half")  # a write that SIGKILL interrupted
    done_id, done = store.new_folder()
    job = Job(done_id, {})
    store.add(job)
    (done / IMAGE).write_bytes(b"x")
    (done / LABELS).write_bytes(b"x")
    store.finish(job, "done")
    upload_id, upload = store.new_folder()  # an upload that never finished: no record
    (upload / "reference.upload").write_bytes(b"x")
    (tmp_path / "jobs" / "not-a-job").mkdir()

    reopened = JobStore(tmp_path, keep_s=3600)
    record = reopened.get(running_id)
    assert (record.state, record.error) == ("failed", RESTARTED)
    assert [p.name for p in running.iterdir()] == [RECORD]
    assert json.loads((running / RECORD).read_text())["state"] == "failed"
    assert reopened.get(done_id).state == "done" and (done / IMAGE).is_file()
    assert not upload.exists() and not (tmp_path / "jobs" / "not-a-job").exists()
    assert reopened.get("../" + done_id) is None and reopened.get(upload_id) is None


def test_the_token_file_and_the_header(tmp_path):
    token = "s3cret-token-of-24-chars"
    (tmp_path / "token").write_text(f"  {token}\n")
    assert read_token(tmp_path / "token") == token
    for header, ok in ((f"Bearer {token}", True), (f"bearer {token}", True), (f"Basic {token}", False),
                       (token, False), (f"Bearer {token}x", False), ("", False), (None, False)):
        assert authorized(header, token) is ok, header
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError, match="at least 16 characters; make one with"):
        read_token(tmp_path / "short")
    out = subprocess.run([sys.executable, "-m", "lungddpm", "serve", "--token-file", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"lungddpm: error: --token-file {tmp_path / 'missing'}: cannot be read")
