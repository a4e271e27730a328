"""The HTTP API (/v1) over a job store and its worker: FastAPI routes, the bearer token, one-line JSON errors.

Every answer other than /v1/health needs ``Authorization: Bearer <token>``; errors are ``{"error": "..."}``
with the message `lungddpm synthesize` would print for the same input. Uploads are checked before they
are queued; a client that goes away mid-upload leaves nothing behind, one that goes away mid-job does not
stop it (the job is the server's until it ends, and its result waits for the keep time).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from lungddpm import __version__
from lungddpm.errors import LungDDPMError
from lungddpm.server.auth import authorized
from lungddpm.server.catalog import Offered
from lungddpm.server.checks import JobRequest, check_job
from lungddpm.server.store import FINAL, IMAGE, LABELS, Job, JobStore
from lungddpm.server.uploads import UploadError, receive_upload, too_large
from lungddpm.server.worker import QueueFull, Worker

log = logging.getLogger("lungddpm.server")
RETRY_AFTER_S = 30  # a full queue: when to ask again


@dataclass
class ServerConfig:
    """Everything a server needs: its token, folder, models, device and limits, and how options become a request."""

    token: str
    work_dir: Path
    catalog: dict[str, Offered]
    device: str  # resolved, e.g. cuda:0 or cpu
    max_queue: int
    max_upload_bytes: int
    keep_s: float
    parse_options: Callable[[dict], JobRequest]  # the command line's own checks of synthesize's options


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A one-line JSON error."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI application of one server (its worker starts with the application and stops with it)."""
    store = JobStore(config.work_dir, config.keep_s)
    state: dict[str, Worker] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["worker"] = Worker(store, lambda job: config.parse_options(job.options), config.device, config.max_queue)
        yield
        state["worker"].stop()

    app = FastAPI(title="lungddpm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(HTTPException)
    async def one_line(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    def token_required(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), config.token):
            raise HTTPException(401, "a valid token is needed: send the header Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    def job_or_404(job_id: str) -> Job:
        store.expire()
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r} on this server (finished jobs are kept "
                                     f"{config.keep_s / 3600:g} h)")
        return job

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "device": config.device,
                "max_upload_mb": config.max_upload_bytes / 2**20}

    @app.get("/v1/models", dependencies=[Depends(token_required)])
    def models() -> dict:
        return {"models": [m.describe() for m in config.catalog.values()]}

    @app.post("/v1/jobs", status_code=202, dependencies=[Depends(token_required)])
    async def submit(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_upload_bytes:  # refused unread (clients can
            return _error(413, too_large(config.max_upload_bytes))  # check max_upload_mb of /v1/health first)
        try:
            state["worker"].check_room()
        except QueueFull:
            return _queue_full(config.max_queue)
        job_id, folder = store.new_folder()
        try:
            upload = await receive_upload(request.headers.get("content-type"), request.stream(), folder,
                                          config.max_upload_bytes)
            job_request = config.parse_options(upload.options)
            await run_in_threadpool(check_job, upload.files, job_request, config.device)
            job = Job(job_id, upload.options)
            store.add(job)
            state["worker"].submit(job)
        except ClientDisconnect:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("a client went away during its upload; nothing was kept")
            return _error(400, "the client disconnected during the upload")
        except UploadError as error:
            shutil.rmtree(folder, ignore_errors=True)
            return _error(error.status, str(error))
        except LungDDPMError as error:
            shutil.rmtree(folder, ignore_errors=True)
            return _error(422, store.for_client(str(error), job_id))
        except QueueFull:
            store.remove(job_id)
            return _queue_full(config.max_queue)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"id": job_id}, status_code=202)

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(token_required)])
    def status(job_id: str) -> dict:
        return job_or_404(job_id).status()

    def result(job_id: str, name: str, download: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}, not done: its files come when GET /v1/jobs/{job_id} "
                                     "says done")
        return FileResponse(store.folder(job_id) / name, media_type="application/octet-stream", filename=download)

    @app.get("/v1/jobs/{job_id}/image", dependencies=[Depends(token_required)])
    def image(job_id: str) -> FileResponse:
        return result(job_id, IMAGE, "synthetic.nrrd")

    @app.get("/v1/jobs/{job_id}/labels", dependencies=[Depends(token_required)])
    def labels(job_id: str) -> FileResponse:
        return result(job_id, LABELS, "synthetic_labels.nrrd")

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(token_required)])
    def cancel(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job.state in FINAL:
            store.remove(job_id)
            log.info("job %s removed", job_id)
        else:
            state["worker"].cancel(job)
        return job.status()

    return app


def _queue_full(max_queue: int) -> JSONResponse:
    """503 with Retry-After."""
    return _error(503, f"the queue is full ({max_queue} jobs waiting); try again in {RETRY_AFTER_S} s",
                  headers={"Retry-After": str(RETRY_AFTER_S)})


def run_server(config: ServerConfig, host: str, port: int) -> None:
    """Serve until SIGINT / SIGTERM (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
