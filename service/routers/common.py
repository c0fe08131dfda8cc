"""Shared by the search and image routes: decoding off the loop, and neighbours -> SearchResponse."""

from __future__ import annotations

import time

from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..engine import LiveVersion, Neighbour
from ..schemas import SearchHit, SearchResponse
from ..uploads import decode_upload


def _timed_decode(data: bytes, max_pixels: int) -> tuple[Image.Image, float]:
    start = time.perf_counter()
    image = decode_upload(data, max_pixels)
    return image, time.perf_counter() - start


async def decode_in_thread(data: bytes, max_pixels: int) -> tuple[Image.Image, float]:
    """The checked RGB image and the seconds its decoding took; UploadRejected on bad input."""
    return await run_in_threadpool(_timed_decode, data, max_pixels)


def hit(n: Neighbour, percentile: float) -> SearchHit:
    return SearchHit(id=n.id, score=n.score, percentile=percentile, path=n.path, label=n.label,
                     image_url=f"/images/{n.id}", thumbnail_url=f"/images/{n.id}/thumbnail")


def answer(live: LiveVersion, neighbours: list[Neighbour], k: int, start: float) -> SearchResponse:
    percentiles = live.score_scale.percentile([n.score for n in neighbours]) if neighbours else []
    return SearchResponse(version=live.version, k_requested=k, k_returned=len(neighbours),
                          took_ms=(time.perf_counter() - start) * 1000.0,
                          results=[hit(n, float(p)) for n, p in zip(neighbours, percentiles, strict=True)])
