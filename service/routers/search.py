"""POST /search: an uploaded image -> its nearest neighbours in the live version."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from ..auth import require_read_access
from ..deps import get_engine, get_live, get_settings, rate_limited
from ..engine import Engine, LiveVersion
from ..schemas import ErrorResponse, SearchResponse, ValidationErrorResponse
from ..settings import Settings
from ..uploads import read_limited
from .common import answer, decode_in_thread

router = APIRouter(tags=["search"])

K = Annotated[int, Query(ge=1, le=100, description="neighbours to return")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop neighbours scoring below this")]

UPLOAD_ERRORS = {
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    413: {"model": ErrorResponse, "description": "upload or image too large"},
    415: {"model": ErrorResponse, "description": "not JPEG, PNG, WebP, GIF, BMP or TIFF"},
    422: {"model": ValidationErrorResponse, "description": "corrupt image or invalid parameters"},
    429: {"model": ErrorResponse, "description": "rate limit; see Retry-After"},
    503: {"model": ErrorResponse, "description": "no index version loaded"},
}


@router.post("/search", response_model=SearchResponse, responses=UPLOAD_ERRORS,
             dependencies=[Depends(require_read_access), Depends(rate_limited)])
async def search(request: Request, file: Annotated[UploadFile, File(description="the query image")],
                 k: K = 10, min_score: MinScore = None,
                 live: LiveVersion = Depends(get_live), engine: Engine = Depends(get_engine),
                 settings: Settings = Depends(get_settings)) -> SearchResponse:
    start = time.perf_counter()
    data = await read_limited(file, settings.max_upload_bytes)
    image, decode_s = await decode_in_thread(data, settings.max_pixels)
    hits, timings = await engine.run(live.query, image, k, min_score)
    request.app.state.metrics.observe_stages({"decode": decode_s, **timings})
    return answer(live, hits, k, start)
