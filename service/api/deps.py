"""Request dependencies, and the `Annotated` aliases the routes take them through: the settings, the engine,
its writes, the live version, the decoder pool, the duplicate groups, the collection listings, the job store, the
job queue, and the per-client rate limits.

All are `async def` so that FastAPI runs them on the event loop rather than in a thread.
"""

from __future__ import annotations

import math
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request

from ..jobs.queue import make_celery
from ..jobs.store import JobStore
from ..live.browse import Browse
from ..live.duplicates import Duplicates
from ..live.engine import Engine
from ..live.version import LiveVersion
from ..live.writes import Writes
from ..settings import Settings
from .decoding import DecodePool
from .errors import NotReady
from .ratelimit import RateLimiter

NOT_READY = "no index version is loaded yet"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_writes(request: Request) -> Writes:
    return request.app.state.writes


async def get_decoder(request: Request) -> DecodePool:
    return request.app.state.decoder


async def get_live(engine: Annotated[Engine, Depends(get_engine)]) -> LiveVersion:
    """The version serving now, taken once: the request finishes on it even if a swap happens meanwhile."""
    live = engine.live
    if live is None:
        raise NotReady(engine.not_ready_reason or NOT_READY)
    return live


async def get_duplicates(request: Request) -> Duplicates:
    """The duplicate groups and their caches (service/live/duplicates.py), made on first use."""
    state = request.app.state
    if getattr(state, "duplicates", None) is None:
        state.duplicates = Duplicates(state.settings.collection_root)
    return state.duplicates


async def get_browse(request: Request) -> Browse:
    """The collection's sorted listings (service/live/browse.py), made on first use."""
    state = request.app.state
    if getattr(state, "browse", None) is None:
        state.browse = Browse()
    return state.browse


async def get_jobs(request: Request) -> JobStore:
    """The job store (Redis), made on first use so that an app without Redis serves searches."""
    state = request.app.state
    if getattr(state, "jobs", None) is None:
        s: Settings = state.settings
        state.jobs = JobStore(s.redis_url, s.jobs_lock_ttl_s, s.jobs_heartbeat_s, s.jobs_history)
    return state.jobs


async def get_queue(request: Request) -> Celery:
    """The Celery app that sends job tasks, made on first use."""
    state = request.app.state
    if getattr(state, "celery", None) is None:
        state.celery = make_celery(state.settings.redis_url)
    return state.celery


def _limit(request: Request, limiter: RateLimiter) -> None:
    """429 with Retry-After once this client has used its requests for now."""
    client = request.client.host if request.client else "unknown"
    wait = limiter.wait(client)
    if wait > 0:
        raise HTTPException(429, f"rate limit exceeded: at most {limiter.per_minute:g} requests per minute",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})


async def rate_limited(request: Request) -> None:
    """The compute routes' limit: searches, similar, uploads."""
    _limit(request, request.app.state.rate_limiter)


async def thumbnail_rate_limited(request: Request) -> None:
    """Thumbnails' own, larger limit: a page of results asks for k of them at once."""
    _limit(request, request.app.state.thumbnail_limiter)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
WritesDep = Annotated[Writes, Depends(get_writes)]
LiveDep = Annotated[LiveVersion, Depends(get_live)]
DecoderDep = Annotated[DecodePool, Depends(get_decoder)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
QueueDep = Annotated[Celery, Depends(get_queue)]
DuplicatesDep = Annotated[Duplicates, Depends(get_duplicates)]
BrowseDep = Annotated[Browse, Depends(get_browse)]
RateLimited = Depends(rate_limited)
ThumbnailRateLimited = Depends(thumbnail_rate_limited)
