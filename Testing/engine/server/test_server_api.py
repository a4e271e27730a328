"""`lungddpm serve` as a client meets it: a real server process on 127.0.0.1, real HTTP (urllib), real files."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from lungddpm.cli import build_parser
from lungddpm.demo.demo import DEMO_MODEL, DEMO_NODULES_MODEL
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.io.volume import write_volume
from lungddpm.layout.attributes import parse_prompt
from lungddpm.model.checkpoints import file_sha256
from lungddpm.server.store import RESTARTED, STOPPED
from lungddpm.synthesis.synthesize import synthesize
from serving import call, multipart, start_server, submit, wait_for

FAST = {"model": "demo", "seed": 3, "sampler": "ddim", "steps": 2}
SLOW = {"model": "demo", "seed": 1, "sampler": "ddim", "steps": 200}  # ~0.5 s a step here: cancelled or killed early


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom (reference, layout) as NRRD bytes, and the phantom."""
    folder = tmp_path_factory.mktemp("case")
    ph = make_phantom(phantom_grid((40, 40, 24), (8.0, 8.0, 12.0)), seed=2, nodules=1)
    ref, lay = write_volume(ph.ct, folder / "ct.nrrd"), write_volume(ph.layout, folder / "layout.nrrd")
    return ref.read_bytes(), lay.read_bytes(), ph


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("server"), "--max-queue", "2", "--max-upload-mb", "1")
    yield running
    running.stop()
    log = running.log_text()
    assert running.token not in log  # the token never reaches the log ...
    assert max(map(len, log.splitlines())) < 400  # ... nor do images (one line per event)


def _json(data: bytes) -> dict:
    return json.loads(data)


def test_health_needs_no_token_and_everything_else_does(server):
    status, _, data = call(server, "GET", "/v1/health", token=None)
    assert status == 200 and _json(data)["status"] == "ok" and _json(data)["device"] == "cpu"
    assert _json(data)["max_upload_mb"] == 1
    for token in (None, "wrong-token-of-the-right-length", server.token + "x", server.token[:-1]):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/" + "0" * 32),
                             ("DELETE", "/v1/jobs/" + "0" * 32), ("GET", "/v1/jobs/" + "0" * 32 + "/image")):
            status, headers, data = call(server, method, path, token=token)
            assert status == 401 and headers["www-authenticate"] == "Bearer" and "Bearer" in _json(data)["error"]
    status, _, data = call(server, "GET", "/v1/models")
    models = {m["name"]: m for m in _json(data)["models"]}
    assert models["demo"] == {"name": "demo", "sha256": file_sha256(DEMO_MODEL), "profile": "native", "size": 32,
                              "timesteps": 250, "attributes": []}
    assert models["demo-nodules"]["attributes"] and models["demo-nodules"]["profile"] == "native-patch"


def test_a_job_equals_a_local_synthesize_voxel_for_voxel(server, case, tmp_path, one_thread):
    reference, layout, ph = case
    status, answer = submit(server, reference, layout, FAST)
    assert status == 202
    job = answer["id"]
    assert call(server, "GET", f"/v1/jobs/{job}/image")[0] in (409, 200)
    record = wait_for(server, job)
    assert record["state"] == "done" and record["step"] == record["total"] == 2 and record["error"] is None
    files = {}
    for which in ("image", "labels"):
        status, _, data = call(server, "GET", f"/v1/jobs/{job}/{which}")
        assert status == 200
        files[which] = tmp_path / f"{which}.nrrd"
        files[which].write_bytes(data)
    local = synthesize(ph.ct, ph.layout, DEMO_MODEL, seed=3, sampler="ddim", steps=2, device="cpu")
    image = sitk.ReadImage(str(files["image"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), local.image.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(files["labels"]))), ph.layout.array)
    assert image.GetSpacing() == pytest.approx(ph.ct.spacing) and image.GetOrigin() == pytest.approx(ph.ct.origin)
    assert image.GetMetaData("SYNTHETIC") == "true" and image.GetMetaData("seed") == "3"
    status, _, data = call(server, "DELETE", f"/v1/jobs/{job}")  # a finished job's files go when asked
    assert status == 200 and not (server.work_dir / "jobs" / job).exists()
    assert call(server, "GET", f"/v1/jobs/{job}")[0] == 404


def test_an_attribute_job_takes_the_prompt_and_guidance_of_the_cli(server, case, tmp_path, one_thread):
    reference, layout, ph = case
    options = {"model": "demo-nodules", "seed": 3, "sampler": "ddim", "steps": 2, "prompt": "solid spiculated nodule",
               "guidance": 2.0}
    status, answer = submit(server, reference, layout, options)
    assert status == 202 and wait_for(server, answer["id"])["state"] == "done"
    (tmp_path / "image.nrrd").write_bytes(call(server, "GET", f"/v1/jobs/{answer['id']}/image")[2])
    local = synthesize(ph.ct, ph.layout, DEMO_NODULES_MODEL, seed=3, sampler="ddim", steps=2, device="cpu",
                       attributes=parse_prompt("solid spiculated nodule"), guidance=2.0)
    image = sitk.ReadImage(str(tmp_path / "image.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), local.image.array)
    assert image.GetMetaData("nodule_attributes") == local.metadata["nodule_attributes"]


def test_per_nodule_attributes_travel_as_the_sidecar_document(server, case, tmp_path, one_thread):
    from lungddpm.layout.attributes import NoduleAttributes
    from lungddpm.layout.sidecar import layout_records, write_sidecar

    reference, layout, ph = case
    records = layout_records(ph.layout, {1: NoduleAttributes(texture=1, calcification=6)})
    document = json.loads(write_sidecar(tmp_path / "layout.nrrd", records).read_text())
    options = {"model": "demo-nodules", "seed": 2, "sampler": "ddim", "steps": 2, "nodules_json": document}
    status, answer = submit(server, reference, layout, options)
    assert status == 202 and wait_for(server, answer["id"])["state"] == "done"
    (tmp_path / "image.nrrd").write_bytes(call(server, "GET", f"/v1/jobs/{answer['id']}/image")[2])
    local = synthesize(ph.ct, ph.layout, DEMO_NODULES_MODEL, seed=2, sampler="ddim", steps=2, device="cpu",
                       attributes=records)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "image.nrrd"))), local.image.array)
    status, answer = submit(server, reference, layout, {**options, "prompt": "solid nodule"})
    assert status in (400, 422) and "give one of them" in answer["error"]


def _cli_message(argv: list[str], capsys) -> str:
    """What `lungddpm synthesize ...` prints for bad options, without its prefix."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synthesize", "--reference", "r.nrrd", "--layout", "l.nrrd", "--model", "demo",
                                   "--output", "o.nrrd", *argv])
    return capsys.readouterr().err.strip().removeprefix("lungddpm: error: ")


def test_bad_uploads_are_refused_with_the_cli_message_and_leave_nothing(server, case, capsys):
    reference, layout, ph = case
    before = set((server.work_dir / "jobs").iterdir())
    for options, flag in (({"seed": -1}, ["--seed", "-1"]), ({"steps": 0}, ["--steps", "0"]),
                          ({"sampler": "euler"}, ["--sampler", "euler"]), ({"seed": "2x"}, ["--seed", "2x"])):
        status, answer = submit(server, reference, layout, {"model": "demo", **options})
        assert status == 422 and answer["error"] == _cli_message(flag, capsys)
    shifted = ph.layout.__class__(ph.layout.array, tuple(np.add(ph.layout.origin, (8.0, 0, 0))), ph.layout.spacing,
                                  ph.layout.direction)
    cases = {
        "layout grid": (reference, _nrrd(shifted), FAST, 422, "origin"),
        "model": (reference, layout, {"model": "../etc/passwd"}, 422, "not offered by this server; choose one of demo"),
        "option": (reference, layout, {"model": "demo", "output": "/tmp/x.nrrd"}, 422, "'output': not job options"),
        "attributes": (reference, layout, {"model": "demo", "nodule": "texture=solid"}, 422, "takes no nodule attributes"),
        "not an image": (b"hello", layout, FAST, 415, "not an NRRD, NIfTI or MHA image"),
        "truncated": (reference[: len(reference) // 2], layout, FAST, 422,
                      "reference.nrrd: the compressed voxel data end early (the file is truncated)"),
        "detached": (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\ndata file: /etc/passwd\n\n", layout, FAST,
                     422, "points at another file"),
    }
    for name, (ref, lay, options, code, words) in cases.items():
        status, answer = submit(server, ref, lay, options)
        assert status == code and words in answer["error"] and str(server.work_dir) not in answer["error"], name
    body, kind = multipart({"reference": reference, "layout": layout, "options": "{not json"})
    status, _, data = call(server, "POST", "/v1/jobs", body=body, content_type=kind)
    assert status == 422 and "options field is not JSON" in _json(data)["error"]
    body, kind = multipart({"reference": reference, "options": "{}"})
    status, _, data = call(server, "POST", "/v1/jobs", body=body, content_type=kind)
    assert status == 400 and "lacks the field(s) layout" in _json(data)["error"]
    status, _, data = call(server, "POST", "/v1/jobs", body=b"\x00garbage", content_type="multipart/form-data; boundary=b")
    assert status == 400 and "malformed" in _json(data)["error"]
    status, _, data = call(server, "POST", "/v1/jobs", body=b"{}", content_type="application/json")
    assert status == 400 and "multipart/form-data" in _json(data)["error"]
    big, kind = multipart({"reference": reference + bytes(2**20), "layout": layout, "options": "{}"})
    said = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: {kind}\r\n")
    for extra, sent in ((f"Content-Length: {len(big)}\r\n\r\n", b""),  # refused on its length, unread
                        ("Transfer-Encoding: chunked\r\n\r\n", _chunked(big))):  # refused once 1 MB is exceeded
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall((said + extra).encode() + sent)
            answer = s.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 413") and b"limit of 1 MB" in answer
    assert set((server.work_dir / "jobs").iterdir()) == before  # nothing of a refused upload is kept


def test_two_clients_queue_behind_a_running_job_a_full_queue_and_cancel_mid_run(server, case):
    reference, layout, _ = case
    slow = submit(server, reference, layout, SLOW)[1]["id"]
    wait_for(server, slow, states=("running",), min_step=1)
    submitted, seen, polled = {}, {}, {"a": threading.Event(), "b": threading.Event()}

    def client(name: str, seed: int) -> None:  # two clients at once, each on its own connections
        status, answer = submit(server, reference, layout, {**FAST, "seed": seed})
        submitted[name] = (status, answer.get("id"))
        states = []
        while status == 202:
            record = _json(call(server, "GET", f"/v1/jobs/{answer['id']}")[2])
            states.append(record["state"])
            polled[name].set()
            if record["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        seen[name] = states

    threads = [threading.Thread(target=client, args=(name, seed)) for name, seed in (("a", 4), ("b", 5))]
    for t in threads:
        t.start()
    assert all(event.wait(60) for event in polled.values())  # each client has seen its job once
    assert sorted(status for status, _ in submitted.values()) == [202, 202]
    for _, job in submitted.values():  # both wait: the device runs the slow job
        assert wait_for(server, job, states=("queued",))["state"] == "queued"
    status, headers, data = call(server, "POST", "/v1/jobs", body=multipart({"options": "{}"})[0],
                                 content_type="multipart/form-data; boundary=x")
    assert status == 503 and headers["retry-after"] == "30" and "queue is full (2 jobs waiting)" in _json(data)["error"]
    status, _, data = call(server, "DELETE", f"/v1/jobs/{slow}")
    at_cancel = _json(data)["step"]
    record = wait_for(server, slow, timeout_s=30)
    assert record["state"] == "cancelled" and at_cancel <= record["step"] <= at_cancel + 1  # within one network pass
    assert call(server, "GET", f"/v1/jobs/{slow}/image")[0] == 409
    assert sorted(p.name for p in (server.work_dir / "jobs" / slow).iterdir()) == ["job.json"]
    for t in threads:
        t.join(120)
    assert {name: states[-1] for name, states in seen.items()} == {"a": "done", "b": "done"}  # the queue moved on
    assert all(states[0] == "queued" for states in seen.values())  # each client first saw its job wait


def test_a_client_that_goes_away_mid_upload_or_mid_job(server, case):
    reference, layout, _ = case
    jobs = server.work_dir / "jobs"
    before = set(jobs.iterdir())
    body, kind = multipart({"reference": reference, "layout": layout, "options": json.dumps(FAST)})
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # half the upload, then gone
        s.sendall(head + body[: len(body) // 2])
    deadline = time.monotonic() + 10
    while set(jobs.iterdir()) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(jobs.iterdir()) == before
    job = submit(server, reference, layout, FAST)[1]["id"]  # a client that leaves while its job runs ...
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # ... in the middle of a request
        s.sendall(f"GET /v1/jobs/{job} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor".encode())
    assert wait_for(server, job)["state"] == "done"  # the job is the server's: it runs to its end and waits
    assert call(server, "GET", f"/v1/jobs/{job}/image")[0] == 200
    assert call(server, "GET", "/v1/health", token=None)[0] == 200


def test_a_server_killed_mid_job_restarts_with_the_job_failed_and_no_partial_files(case, tmp_path):
    reference, layout, _ = case
    first = start_server(tmp_path / "a")
    try:
        job = submit(first, reference, layout, SLOW)[1]["id"]
        wait_for(first, job, states=("running",), min_step=1)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    second = start_server(tmp_path / "b", token=first.token, work_dir=first.work_dir)
    try:
        record = wait_for(second, job)
        assert record["state"] == "failed" and record["error"] == RESTARTED
        assert [p.name for p in (first.work_dir / "jobs" / job).iterdir()] == ["job.json"]
        assert call(second, "GET", f"/v1/jobs/{job}/image")[0] == 409
        running = submit(second, reference, layout, SLOW)[1]["id"]
        wait_for(second, running, states=("running",), min_step=1)
    finally:
        second.stop()  # SIGTERM: a clean stop ends the running job as failed, with a message
    record = json.loads((first.work_dir / "jobs" / running / "job.json").read_text())
    assert (record["state"], record["error"]) == ("failed", STOPPED) and second.process.returncode is not None
    assert [p.name for p in (first.work_dir / "jobs" / running).iterdir()] == ["job.json"]


def _chunked(body: bytes, size: int = 65536) -> bytes:
    """A body in HTTP/1.1 chunked transfer encoding (no Content-Length)."""
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def _nrrd(volume) -> bytes:
    """A Volume as NRRD bytes."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return write_volume(volume, Path(folder) / "v.nrrd").read_bytes()
