"""The one place where errors become HTTP answers. Every error is JSON {"detail": "..."} (plus `errors` for 422,
`job_id` for 409), with no server path in it:

    RequestValidationError      -> 422, a readable detail and one entry per invalid parameter
    JobsUnavailable, NotReady   -> 503 with Retry-After (Redis or the live version is not there yet)
    VersionRefused              -> 503 with Retry-After (a version that cannot serve; the old one stays)
    IndexStoreError             -> 503 with Retry-After (the artifact store cannot make the version asked for)
    JobConflict                 -> 409 with the id of the job holding the lock
    EmptyCollectionError        -> 409 (a delete would leave no image)
    DamagedVersionError         -> 409 (a kept version whose files fail their checksums cannot be served)
    JobNotFound                 -> 404
    HTTPException               -> its status and detail (the routes' own precise 4xx)
    anything else               -> 500 "internal server error", logged with its trace
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from index import DamagedVersionError, EmptyCollectionError, IndexStoreError

from ..jobs.store import JobConflict, JobsUnavailable
from ..live.version import VersionRefused

log = logging.getLogger(__name__)

INTERNAL = "internal server error"
RETRY_AFTER_S = 5
# an absolute path of two or more components (not a URL's path: no ':' or '/' right before it)
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


class NotReady(RuntimeError):
    """No index version is loaded yet (the message says why)."""


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id}")


def without_paths(text: str) -> str:
    """The message with every absolute server path replaced by <path>: error details are shown to clients."""
    return _PATH.sub("<path>", text)


def _json(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": without_paths(detail), **extra}, status_code=status, headers=headers)


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _json(422, "invalid request: " + "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors),
                 errors=errors)


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _json(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


async def conflict(request: Request, exc: JobConflict) -> JSONResponse:
    return _json(409, str(exc), job_id=exc.job_id)


async def index_conflict(request: Request, exc: EmptyCollectionError | DamagedVersionError) -> JSONResponse:
    return _json(409, str(exc))


async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
    return _json(404, str(exc))


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _json(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json(500, INTERNAL)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    for unavailable_error in (JobsUnavailable, NotReady, VersionRefused, IndexStoreError):
        app.add_exception_handler(unavailable_error, unavailable)
    app.add_exception_handler(JobConflict, conflict)
    for conflicting in (EmptyCollectionError, DamagedVersionError):
        app.add_exception_handler(conflicting, index_conflict)
    app.add_exception_handler(JobNotFound, not_found)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
