"""The FastAPI application: `create_app(settings)` wires settings, engine, middleware, errors and routers.

    uvicorn --factory service.api.app:create_app      # settings from NPID_* variables / .env
    npid serve                                    # the same, through the console entry point

Adding a resource means adding a router module and one line to ROUTERS.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import faiss
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..live.engine import Engine
from ..live.writes import Writes
from ..settings import Settings, load_settings
from . import errors
from .auth import document_read_access
from .bodylimit import BodyLimitMiddleware
from .decoding import DecodePool, return_large_buffers_to_the_os
from .metrics import Metrics, MetricsMiddleware
from .ratelimit import RateLimiter
from .routers import duplicates, images, jobs, page, search, status, versions
from .routers.common import declare_app_errors
from .routers.page import STATIC

log = logging.getLogger(__name__)

ROUTERS = (search.router, images.router, duplicates.router, versions.router, jobs.router, status.router,
           page.router)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    logging.getLogger("service").setLevel(settings.log_level)
    metrics = Metrics()
    engine = Engine(settings.artifacts_dir, settings.device, settings.poll_interval_s,
                    settings.inference_concurrency, on_swap=lambda outcome: metrics.swaps.labels(outcome).inc())
    metrics.watch(engine.state)
    writes = Writes(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("settings: %s", settings.masked())
        if settings.torch_threads:  # many single-threaded calls at once serve concurrent queries best
            torch.set_num_threads(settings.torch_threads)
            faiss.omp_set_num_threads(settings.torch_threads)
        await run_in_threadpool(engine.start)  # loads the current version, if any, then polls
        try:
            yield
        finally:
            engine.stop()
            writes.compactor.wait()

    app = FastAPI(title="npid-search", summary="image similarity search", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.writes = writes
    app.state.metrics = metrics
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.state.thumbnail_limiter = RateLimiter(settings.thumbnail_rate_limit_per_minute,
                                              settings.thumbnail_rate_limit_burst)
    app.state.decoder = DecodePool(settings.decode_threads, settings.decode_pixel_budget)
    return_large_buffers_to_the_os()

    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _document(app, settings.protect_reads)

    # added last = outermost: metrics see every answer, including the body limit's 413s
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes,
                       batch_paths={"/images": images.MAX_BATCH_FILES})
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _document(app: FastAPI, protect_reads: bool) -> None:
    """The schema declares the key on reads exactly when this server asks for it there, and every 422 as the
    body errors.py answers."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_read_access(declare_app_errors(generate()), protect_reads)
        return app.openapi_schema

    app.openapi = openapi
