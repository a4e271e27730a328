"""A client of `lungddpm serve` with the standard library only (urllib): nothing to install inside Slicer.

Each call is one short HTTP request with a timeout; the server's errors come back as RemoteError with
the server's one-line message (the same text the engine prints locally) and the HTTP status.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

API = "/v1"
FINAL_STATES = ("done", "failed", "cancelled")


class RemoteError(RuntimeError):
    """A request the server refused or could not answer; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Server:
    """Where the server is and the token it wants; timeout_s bounds each request (uploads and downloads too)."""

    url: str
    token: str
    timeout_s: float = 30.0

    def endpoint(self, path: str) -> str:
        """The full URL of an API path."""
        return self.url.rstrip("/") + API + path


def check_url(url: str) -> str:
    """The URL itself when it is http(s)://host[:port][/prefix]; ValueError naming the fix otherwise."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"server URL {url!r} must look like http://127.0.0.1:8890 (an SSH tunnel) or "
                         "https://host/prefix (a TLS proxy)")
    return url.strip()


def connect(url: str, token: str, timeout_s: float = 30.0) -> Server:
    """A Server from the panel's URL and token; ValueError naming what is missing or malformed."""
    if not token.strip():
        raise ValueError("the server needs its token: paste the content of the server's --token-file")
    return Server(check_url(url), token.strip(), timeout_s)


def _request(server: Server, method: str, path: str, *, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, token: bool = True):
    """urlopen one request; RemoteError with the server's message for HTTP errors and unreachable servers."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {server.token}"
    request = urllib.request.Request(server.endpoint(path), data=body, method=method, headers=sent)
    try:
        return urllib.request.urlopen(request, timeout=server.timeout_s)
    except urllib.error.HTTPError as error:
        raise RemoteError(_server_message(error), error.code) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RemoteError(f"the server at {server.url} cannot be reached ({reason}); check the URL and that the "
                          "server (or its SSH tunnel) is running") from None


def _server_message(error: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, or the HTTP status line."""
    try:
        message = json.loads(error.read().decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, OSError):
        message = f"HTTP {error.code} {error.reason}"
    if error.code == 401:
        return f"{message} (check the token in the module's server settings)"
    return message


def _json(server: Server, method: str, path: str, **kwargs) -> dict:
    """One request whose answer is a JSON object."""
    with _request(server, method, path, **kwargs) as response:
        return json.loads(response.read().decode("utf-8"))


def health(server: Server) -> dict:
    """GET /v1/health (no token): status, version, device, max_upload_mb."""
    return _json(server, "GET", "/health", token=False)


def list_models(server: Server) -> list[dict]:
    """GET /v1/models: each offered model's name, sha256, profile, size, timesteps and attributes."""
    return _json(server, "GET", "/models")["models"]


def test_connection(server: Server) -> str:
    """One line saying what the server is (version, device, models); RemoteError if it is unreachable or the token wrong."""
    info = health(server)
    names = [m["name"] for m in list_models(server)]
    return (f"lungddpm {info['version']} on {info['device']}, {len(names)} model(s): {', '.join(names)}")


def multipart_body(files: Mapping[str, Path], fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body of files (sent as '<field>', not their local names) and text fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, path in files.items():
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode(), Path(path).read_bytes(), b"\r\n"]
    for name, value in fields.items():
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode(),
                  value.encode("utf-8"), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def submit(server: Server, reference: Path, layout: Path, options: Mapping[str, object]) -> str:
    """POST /v1/jobs with the two images and the options; the job's id (RemoteError for a refused job)."""
    limit_mb = health(server).get("max_upload_mb")
    size_mb = (Path(reference).stat().st_size + Path(layout).stat().st_size) / 2**20
    if limit_mb is not None and size_mb > limit_mb:
        raise RemoteError(f"the CT and layout ({size_mb:.0f} MB) are over the server's upload limit of {limit_mb:g} MB; "
                          "crop the CT to the chest, or ask the server's operator to raise --max-upload-mb", 413)
    body, content_type = multipart_body({"reference": reference, "layout": layout},
                                        {"options": json.dumps(dict(options))})
    return _json(server, "POST", "/jobs", body=body, headers={"Content-Type": content_type})["id"]


def status(server: Server, job_id: str) -> dict:
    """GET /v1/jobs/{id}: state, step, total, eta_s, error."""
    return _json(server, "GET", f"/jobs/{job_id}")


def cancel(server: Server, job_id: str) -> dict:
    """DELETE /v1/jobs/{id}: a queued job is cancelled at once, a running one within one network pass."""
    return _json(server, "DELETE", f"/jobs/{job_id}")


def download(server: Server, job_id: str, which: str, target: Path) -> Path:
    """GET /v1/jobs/{id}/image or /labels into target (written whole, then renamed); the path."""
    if which not in ("image", "labels"):
        raise ValueError(f"which must be 'image' or 'labels', not {which!r}")
    target = Path(target)
    partial = target.with_name(f".{target.name}.part")
    try:
        with _request(server, "GET", f"/jobs/{job_id}/{which}") as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
