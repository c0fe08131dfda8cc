"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ...live.watching import read_progress
from ..deps import LiveDep, SettingsDep
from ..schemas import Health, Ready
from .common import UNAVAILABLE

router = APIRouter(tags=["status"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up and answering."""
    return Health()


@router.get("/ready", response_model=Ready, responses=UNAVAILABLE)
async def ready(live: LiveDep, settings: SettingsDep) -> Ready:
    """A version is loaded and searchable; with the folder watcher's progress (`watch`)."""
    watch = await run_in_threadpool(read_progress, settings.artifacts_dir) if settings.watch else None
    return Ready.of(live, watch)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
