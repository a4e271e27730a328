"""The model list (Resources/models.json), the model cache folder, and downloads checked by SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
SOURCES = ("bundled", "url", "local_file")
REQUIRED_FIELDS = ("name", "title", "version", "description", "source", "file_name", "sha256", "input_size",
                   "in_channels", "profile", "timesteps", "supported", "cpu_seconds_per_step", "cpu_memory_gb", "gpu_memory_gb",
                   "estimate_basis", "citation")
CACHE_ENV = "LUNGDDPM_MODEL_CACHE"
Downloader = Callable[[str, Path], None]
Progress = Callable[[int, "int | None"], None]  # (bytes received, total bytes or None when the server does not say)
DOWNLOAD_CHUNK = 1 << 20


class ModelListError(ValueError):
    """A models.json that does not follow the schema."""


class ModelUnavailableError(RuntimeError):
    """A chosen model whose file is missing, with what to do about it."""


class ChecksumError(RuntimeError):
    """A file whose SHA-256 differs from the expected one."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the list, with the time of one network pass and the peak memory of a synthesis (see estimate_basis)."""

    name: str
    title: str
    version: str
    description: str
    source: str  # bundled | url | local_file
    file_name: str
    sha256: str | None
    input_size: int
    in_channels: int
    profile: str
    timesteps: int
    supported: bool
    cpu_seconds_per_step: float  # one network pass (one sampling step of any sampler); one cube for patch models
    gpu_seconds_per_step: float | None  # None: not measured
    cpu_memory_gb: float
    gpu_memory_gb: float
    estimate_basis: str
    citation: str
    url: str | None = None
    download_page: str | None = None
    unsupported_reason: str | None = None


def _check_entry(raw: dict, index: int) -> ModelEntry:
    """A ModelEntry from one JSON object, or ModelListError naming the entry and the problem."""
    label = f"models.json entry {index} ({raw.get('name', 'unnamed')})"
    missing = [key for key in REQUIRED_FIELDS if key not in raw]
    if missing:
        raise ModelListError(f"{label}: missing fields {missing}")
    if raw["source"] not in SOURCES:
        raise ModelListError(f"{label}: source {raw['source']!r} is not one of {SOURCES}")
    sha = raw["sha256"]
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ModelListError(f"{label}: sha256 must be 64 lower-case hex digits or null")
    if raw["source"] == "url" and (sha is None or not raw.get("url")):
        raise ModelListError(f"{label}: a downloadable model needs both 'url' and 'sha256'")
    if raw["source"] == "local_file" and not raw.get("download_page"):
        raise ModelListError(f"{label}: a local-file model needs a 'download_page' telling users where to get it")
    if not raw["supported"] and not raw.get("unsupported_reason"):
        raise ModelListError(f"{label}: an unsupported model needs an 'unsupported_reason'")
    for key in ("input_size", "in_channels", "timesteps"):
        if not isinstance(raw[key], int) or raw[key] <= 0:
            raise ModelListError(f"{label}: {key} must be a positive integer")
    for key in ("cpu_seconds_per_step", "cpu_memory_gb", "gpu_memory_gb"):
        if not isinstance(raw[key], (int, float)) or raw[key] <= 0:
            raise ModelListError(f"{label}: {key} must be a positive number")
    gpu_seconds = raw.get("gpu_seconds_per_step")
    if gpu_seconds is not None and (not isinstance(gpu_seconds, (int, float)) or gpu_seconds <= 0):
        raise ModelListError(f"{label}: gpu_seconds_per_step must be a positive number or null (not measured)")
    known = set(REQUIRED_FIELDS) | {"url", "download_page", "unsupported_reason", "gpu_seconds_per_step"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelListError(f"{label}: unknown fields {unknown}")
    return ModelEntry(**{**raw, "gpu_seconds_per_step": raw.get("gpu_seconds_per_step")})


def load_model_list(path: Path) -> list[ModelEntry]:
    """The validated entries of a models.json file (schema version SCHEMA_VERSION, unique names)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelListError(f"{path}: cannot be read as JSON ({error})") from error
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ModelListError(f"{path}: schema_version {document.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    entries = [_check_entry(raw, n) for n, raw in enumerate(document.get("models", []))]
    names = [e.name for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ModelListError(f"{path}: the list must hold at least one model and unique names; got {names}")
    return entries


def default_cache_dir() -> Path:
    """The model cache: $LUNGDDPM_MODEL_CACHE, else the platform's user cache folder + lungddpm/models."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "lungddpm" / "models"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file as lower-case hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def urllib_download(url: str, target: Path, progress: Progress | None = None, timeout_s: float = 60.0) -> None:
    """Download url to target with urllib, reporting (received, total) after each chunk; a short body is an OSError."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(target, "wb") as handle:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        while block := response.read(DOWNLOAD_CHUNK):
            handle.write(block)
            received += len(block)
            if progress is not None:
                progress(received, total)
    if total is not None and received != total:
        raise OSError(f"download of {url} stopped after {received} of {total} bytes; retry")


def download(url: str, target: Path, sha256: str, downloader: Downloader = urllib_download) -> Path:
    """Download url to target through a .part file; the file appears only if its SHA-256 is the expected one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        downloader(url, partial)
        actual = file_sha256(partial)
        if actual != sha256:
            raise ChecksumError(f"download of {url} has SHA-256 {actual}, expected {sha256}; the file was deleted. "
                                f"Retry, or download it by hand and choose it as a local file")
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    return target


def verify(path: Path, sha256: str | None) -> None:
    """Raise ChecksumError when an expected SHA-256 is given and the file's differs."""
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise ChecksumError(f"{path}: SHA-256 {actual} differs from the expected {sha256}; "
                                f"this is not the file the model list describes")


def present_model_file(entry: ModelEntry, *, engine_dir: Path, cache_dir: Path, local_file: Path | None = None
                       ) -> Path | None:
    """The checkpoint file of an entry that is already here (bundled, chosen by the user, or cached), else None."""
    if entry.source == "bundled":
        path = engine_dir / "lungddpm" / "models" / entry.file_name
    elif local_file:
        path = Path(local_file)
    else:
        path = cache_dir / entry.file_name
    return path if path.is_file() else None


def resolve_model_file(entry: ModelEntry, *, engine_dir: Path, cache_dir: Path, local_file: Path | None = None,
                       downloader: Downloader = urllib_download) -> Path:
    """The checkpoint file of an entry: bundled, chosen by the user, found in the cache, or downloaded to it."""
    if not entry.supported:
        raise ModelUnavailableError(f"{entry.title}: {entry.unsupported_reason}")
    path = present_model_file(entry, engine_dir=engine_dir, cache_dir=cache_dir, local_file=local_file)
    if path is None:
        if entry.source == "bundled":
            raise ModelUnavailableError(f"{entry.title}: the bundled file "
                                        f"{engine_dir / 'lungddpm' / 'models' / entry.file_name} is missing; rebuild or "
                                        f"reinstall the extension")
        if local_file:
            raise ModelUnavailableError(f"{entry.title}: the chosen file {local_file} does not exist")
        if entry.source == "url":
            return download(entry.url, cache_dir / entry.file_name, entry.sha256, downloader)
        raise ModelUnavailableError(f"{entry.title}: download {entry.file_name} from {entry.download_page} and choose "
                                    f"it as the local file, or put it in the model folder {cache_dir}")
    verify(path, entry.sha256)
    return path
