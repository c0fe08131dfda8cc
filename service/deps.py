"""Request dependencies: the settings, the live engine version, and the per-client rate limit.

All are `async def` so that FastAPI runs them on the event loop rather than in a thread.
"""

from __future__ import annotations

import math

from fastapi import Depends, HTTPException, Request

from .engine import Engine, LiveVersion
from .ratelimit import RateLimiter
from .settings import Settings

NOT_READY = "no index version is loaded yet"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_live(engine: Engine = Depends(get_engine)) -> LiveVersion:
    """The version serving now, taken once: the request finishes on it even if a swap happens meanwhile."""
    live = engine.live
    if live is None:
        raise HTTPException(503, engine.not_ready_reason or NOT_READY)
    return live


async def rate_limited(request: Request) -> None:
    """429 with Retry-After once this client has used its requests for now."""
    limiter: RateLimiter = request.app.state.rate_limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.wait(client)
    if wait > 0:
        raise HTTPException(429, f"rate limit exceeded: at most {limiter.per_minute:g} requests per minute",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
