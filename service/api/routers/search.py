"""POST /search: an uploaded image -> its nearest neighbours in the live version."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from ..auth import READ, ReadAccess
from ..deps import DecoderDep, EngineDep, LiveDep, RateLimited, SettingsDep
from ..schemas import SearchResponse
from ..uploads import IMAGE_FILE, read_limited
from .common import UPLOAD_ERRORS, answer, decode, image_parts

router = APIRouter(tags=["search"])

K = Annotated[int, Query(ge=1, le=100, description="neighbours to return")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop neighbours scoring below this")]


@router.post("/search", response_model=SearchResponse, responses=UPLOAD_ERRORS,
             openapi_extra={**READ, **image_parts("file")}, dependencies=[ReadAccess, RateLimited])
async def search(request: Request,
                 file: Annotated[UploadFile, File(description="the query image (JPEG, PNG, WebP, GIF, BMP or TIFF)",
                                                  json_schema_extra=IMAGE_FILE)],
                 live: LiveDep, engine: EngineDep, decoder: DecoderDep, settings: SettingsDep,
                 k: K = 10, min_score: MinScore = None) -> SearchResponse:
    """Nearest neighbours of an uploaded image in the live version."""
    start = time.perf_counter()
    data = await read_limited(file, settings.max_upload_bytes)
    decoded, decode_s = await decode(decoder, data, settings.max_pixels, live.embedder.pre.resize)
    hits, timings = await engine.run(live.query, decoded.image, k, min_score)
    request.app.state.metrics.observe_stages({"decode": decode_s, **timings})
    return answer(live, hits, k, start)
