"""The one place where errors become HTTP answers. Every error is JSON {"detail": "..."} (plus `errors` for 422,
`job_id` for 409), with no server path in it:

    RequestValidationError      -> 422, a readable detail and one entry per invalid parameter
    a body that does not parse  -> 422 too (invalid UTF-8 JSON, malformed multipart: the frameworks' bare 400)
    JobsUnavailable, NotReady   -> 503 with Retry-After (Redis or the live version is not there yet)
    VersionRefused              -> 503 with Retry-After (a version that cannot serve; the old one stays)
    IndexStoreError             -> 503 with Retry-After (the artifact store cannot make the version asked for)
    JobConflict                 -> 409 with the id of the job holding the lock
    EmptyCollectionError        -> 409 (a delete would leave no image)
    DamagedVersionError         -> 409 (a kept version whose files fail their checksums cannot be served)
    JobNotFound                 -> 404
    HTTPException               -> its status and detail (the routes' own precise 4xx)
    405 (path served, not so)   -> Allow naming every method the schema declares on the path (and OPTIONS);
                                   OPTIONS itself answers 204 with that Allow (a CORS preflight never gets
                                   here: the CORS middleware, when configured, answers it first)
    anything else               -> 500 "internal server error", logged with its trace
"""

from __future__ import annotations

import logging
import re

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import get_route_path

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


def _invalid(errors: list[dict]) -> JSONResponse:
    return _json(422, "invalid request: " + "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors),
                 errors=errors)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _invalid([{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()])


def unparsable_body(exc: HTTPException) -> dict | None:
    """The error entry (loc, msg, type) of a body that could not be parsed, when `exc` is the bare 400 a framework
    raised for it: Starlette for a malformed multipart body, FastAPI for a JSON body it cannot even decode (invalid
    UTF-8, an integer past Python's digit limit; JSON syntax errors are RequestValidationErrors already). None for
    any other error."""
    cause = exc.__cause__ or exc.__context__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, MultiPartException):
        msg, kind = f"malformed multipart body: {cause.message}", "multipart_invalid"
    elif isinstance(cause, UnicodeDecodeError):
        msg, kind = "JSON decode error: the body is not UTF-8 text", "json_invalid"
    elif isinstance(cause, ValueError):
        msg, kind = f"the body cannot be parsed: {cause}", "body_invalid"
    else:
        msg, kind = "the body cannot be parsed", "body_invalid"
    return {"loc": ["body"], "msg": msg, "type": kind}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")  # the order Allow names them in


def allowed_methods(request: Request) -> list[str]:
    """Every method the schema declares on this request's path, whichever route serves it (Starlette's 405 names
    only the first route that matches the path: GET /images/{id} but not DELETE /images/{id}). Empty when only
    routes outside the schema match (the OpenAPI UI, the static files); a deprecated alias left out of the schema
    is served but not advertised."""
    path, methods = get_route_path(request.scope), set()
    for route in fastapi.routing.iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and getattr(route, "include_in_schema", True) and regex is not None and regex.match(path):
            methods |= route.methods
    return [m for m in _METHODS if m in methods]


def method_not_allowed(request: Request, exc: HTTPException) -> Response:
    allow = allowed_methods(request) or [m.strip() for m in (exc.headers or {}).get("Allow", "").split(",")
                                         if m.strip()]
    allow = ", ".join([*allow, "OPTIONS"])
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": allow})
    return _json(405, f"method {request.method} not allowed: this path serves {allow}", {"Allow": allow})


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _json(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


async def conflict(request: Request, exc: JobConflict) -> JSONResponse:
    return _json(409, str(exc), job_id=exc.job_id)


async def index_conflict(request: Request, exc: EmptyCollectionError | DamagedVersionError) -> JSONResponse:
    return _json(409, str(exc))


async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
    return _json(404, str(exc))


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return method_not_allowed(request, exc)
    if (error := unparsable_body(exc)) is not None:
        return _invalid([error])
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
