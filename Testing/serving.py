"""A real `lungddpm serve` process on 127.0.0.1 for tests, and a small urllib client (the stdlib's HTTP, not the server's)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its URL, token, work folder, process and log file."""

    url: str
    token: str
    work_dir: Path
    process: subprocess.Popen
    log: Path
    port: int

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def start_server(folder: Path, *flags: str, token: str | None = None, port: int | None = None,
                 work_dir: Path | None = None) -> Server:
    """Start `python -m lungddpm serve` on a free port (CPU, one thread) and wait until /v1/health answers."""
    folder.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(24)
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    port = port or free_port()
    work_dir = work_dir or folder / "work"
    log = folder / f"server-{port}-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lungddpm", "serve", "--port", str(port), "--token-file",
                                    str(token_file), "--work-dir", str(work_dir), "--device", "cpu", "--threads", "1",
                                    *flags], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", token, work_dir, process, log, port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {server.log_text()[-2000:]}")
        try:
            with urllib.request.urlopen(server.url + "/v1/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError("the server did not answer within 120 s")


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """A multipart/form-data body (bytes values as files, str as text fields) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n")
        else:
            head, value = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        parts.append(f"--{boundary}\r\n".encode() + head.encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(server: Server, method: str, path: str, *, token: str | None = "server", body: bytes | None = None,
         content_type: str | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request: (status, headers, body); token 'server' sends the server's own token, None none."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {server.token if token == 'server' else token}"
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def submit(server: Server, reference: bytes, layout: bytes, options: dict) -> tuple[int, dict]:
    """POST /v1/jobs: (status, JSON answer)."""
    body, kind = multipart({"reference": reference, "layout": layout, "options": json.dumps(options)})
    status, _, data = call(server, "POST", "/v1/jobs", body=body, content_type=kind)
    return status, json.loads(data)


def wait_for(server: Server, job_id: str, states: tuple[str, ...] = ("done", "failed", "cancelled"),
             timeout_s: float = 120, min_step: int = 0) -> dict:
    """Poll a job until it is in one of states (and at least at min_step); its last status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _, data = call(server, "GET", f"/v1/jobs/{job_id}")
        record = json.loads(data)
        if status == 200 and record["state"] in states and record["step"] >= min_step:
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout_s} s: {record}")
