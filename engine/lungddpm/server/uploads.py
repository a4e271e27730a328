"""A job's upload: a multipart body streamed into the job's own folder, within a size limit, images sniffed by content.

File names are never taken from the client: each file field is written as ``<field>.upload`` and renamed
to ``<field><extension>`` by what its first bytes show (NRRD, NIfTI, gzip-compressed NIfTI, MHA). Headers
that point at other files (NRRD ``data file``, MHA ``ElementDataFile`` other than LOCAL) are refused, so
that reading an upload never opens a file of the server's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELDS = ("reference", "layout")
OPTIONS_FIELD = "options"
MAX_OPTIONS_BYTES = 64 * 1024  # the JSON settings of a job are a few hundred bytes
HEADER_BYTES = 4096  # how much of an image file is read to tell its format


class UploadError(Exception):
    """An upload refused with an HTTP status (400 malformed, 413 too large, 415/422 unusable) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """What a job's request carried: its two image files in the job folder and its options."""

    files: dict[str, Path] = field(default_factory=dict)
    options: dict = field(default_factory=dict)


class _Receiver:
    """Multipart callbacks: each part's headers, file parts into the folder, the options part into memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.header_field, self.header_value, self.headers = b"", b"", {}
        self.name: str | None = None
        self.sink = None
        self.options = bytearray()
        self.seen: list[str] = []

    def on_part_begin(self) -> None:
        self.headers, self.name = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name not in (*FILE_FIELDS, OPTIONS_FIELD):
            raise UploadError(400, f"unknown form field {name[:40]!r}; send file fields {' and '.join(FILE_FIELDS)} "
                                   f"and the text field {OPTIONS_FIELD}")
        if name in self.seen:
            raise UploadError(400, f"form field {name!r} sent twice; send it once")
        self.seen.append(name)
        self.name = name
        if name in FILE_FIELDS:
            self.sink = open(self.folder / f"{name}.upload", "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is not None:
            self.sink.write(data[start:end])
        else:
            self.options += data[start:end]
            if len(self.options) > MAX_OPTIONS_BYTES:
                raise UploadError(413, f"the {OPTIONS_FIELD} field is over {MAX_OPTIONS_BYTES // 1024} KB; send the "
                                       "job's settings only")

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the file being written, if any."""
        if self.sink is not None:
            self.sink.close()
            self.sink = None


async def receive_upload(content_type: str | None, chunks: AsyncIterator[bytes], folder: Path, max_bytes: int) -> Upload:
    """Stream a multipart/form-data body into folder (which must exist); UploadError for anything unusable.

    A body over max_bytes (sent without a Content-Length, or with a false one) is read to its end without
    being kept, then refused with 413.
    """
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(400, "a job is a multipart/form-data request with file fields reference and layout and a "
                               "text field options (JSON)")
    receiver = _Receiver(folder)
    names = ("on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
             "on_headers_finished")
    parser = MultipartParser(params[b"boundary"], {n: getattr(receiver, n) for n in names}, max_size=float("inf"))
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received <= max_bytes:
                parser.write(chunk)
        if received > max_bytes:  # read to its end (and dropped), so that the client can read the answer
            raise UploadError(413, too_large(max_bytes))
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # the multipart parser's own errors: a malformed body
        if type(error).__module__.startswith("python_multipart"):
            raise UploadError(400, f"the multipart body is malformed ({error}); send a multipart/form-data request") \
                from None
        raise
    finally:
        receiver.close()
    missing = [name for name in (*FILE_FIELDS, OPTIONS_FIELD) if name not in receiver.seen]
    if missing:
        raise UploadError(400, f"the request lacks the field(s) {', '.join(missing)}; send file fields "
                               f"{' and '.join(FILE_FIELDS)} and the text field {OPTIONS_FIELD} (JSON)")
    upload = Upload(options=_options(bytes(receiver.options)))
    for name in FILE_FIELDS:
        raw = folder / f"{name}.upload"
        target = folder / f"{name}{image_extension(raw, name)}"
        raw.rename(target)
        upload.files[name] = target
    return upload


def too_large(max_bytes: int) -> str:
    """The message of an upload over the limit."""
    return (f"the upload is larger than this server's limit of {max_bytes / 2**20:g} MB; crop the CT to the chest, or "
            "ask the server's operator to raise --max-upload-mb")


def _options(raw: bytes) -> dict:
    """The options field as a JSON object; UploadError 422 otherwise."""
    try:
        options = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UploadError(422, f"the {OPTIONS_FIELD} field is not JSON ({error}); send an object such as "
                               '{"model": "demo", "seed": 0}') from None
    if not isinstance(options, dict):
        raise UploadError(422, f"the {OPTIONS_FIELD} field must be a JSON object such as "
                               '{"model": "demo", "seed": 0}')
    return options


def image_extension(path: Path, name: str) -> str:
    """The extension read_volume needs for an uploaded image, told by its first bytes; UploadError 415 otherwise."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    text = head.decode("latin-1").lower()
    if head.startswith(b"NRRD"):
        if "data file:" in text or "datafile:" in text:
            raise UploadError(422, f"{name}: an NRRD header that points at another file; send the image as one "
                                   "file (attached data)")
        return ".nrrd"
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"
    if head[344:348] in (b"n+1\x00", b"n+2\x00") or head[4:8] == b"n+2\x00":
        return ".nii"
    if text.startswith(("objecttype", "ndims")) and "elementdatafile" in text:
        if "elementdatafile=local" not in "".join(text.split()):
            raise UploadError(422, f"{name}: an MHA header that points at another file; send the image with "
                                   "ElementDataFile = LOCAL (one .mha file)")
        return ".mha"
    raise UploadError(415, f"{name}: not an NRRD, NIfTI or MHA image; send the file as .nrrd, .nii, .nii.gz or .mha")
