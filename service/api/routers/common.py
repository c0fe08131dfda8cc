"""Shared by the routes: the OpenAPI error responses (and `declare_app_errors`, which makes every 422 of the
schema the app's own), the upload fields' media types; decoding in the bounded pool, and neighbours ->
SearchResponse."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ...live import collection
from ...live.version import LiveVersion, Neighbour
from ..decoding import DecodePool, PixelBudget
from ..schemas import ErrorResponse, SearchHit, SearchResponse, ValidationErrorResponse
from ..uploads import Decoded, decode_upload, draft_pixels

RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
INVALID = {422: {"model": ValidationErrorResponse, "description": "invalid parameters"}}
LIMITED = {429: {"model": ErrorResponse, "description": "rate limit; see Retry-After", "headers": RETRY_AFTER}}
UNAVAILABLE = {503: {"model": ErrorResponse, "description": "not available yet; see Retry-After",
                     "headers": RETRY_AFTER}}
WRITE_AUTH = {401: {"model": ErrorResponse, "description": "missing API key"},
              403: {"model": ErrorResponse, "description": "wrong API key, or the server has none"}}
NOT_FOUND = {404: {"model": ErrorResponse, "description": "no such image"}}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "upload or image too large"},
    415: {"model": ErrorResponse, "description": "not JPEG, PNG, WebP, GIF, BMP or TIFF"},
    422: {"model": ValidationErrorResponse, "description": "corrupt image or invalid parameters"},
    **LIMITED, **UNAVAILABLE,
}


def image_parts(field: str) -> dict[str, Any]:
    """`openapi_extra` of an upload route: the multipart `field`'s parts are images (the 415 names the formats
    accepted, decided from the bytes whatever Content-Type a part carries). `image/*` rather than the six types
    listed: clients serialize a part by its declared media type, and few know image/bmp or image/tiff."""
    return {"requestBody": {"content": {"multipart/form-data": {"encoding": {field: {"contentType": "image/*"}}}}}}


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_APP_422 = ValidationErrorResponse.__name__


def declare_app_errors(schema: dict) -> dict:
    """Every 422 in `schema` declares the body errors.py answers it with (ValidationErrorResponse): FastAPI adds
    its own HTTPValidationError (a list `detail`) to each route with parameters whose `responses` name no 422;
    that one is replaced here, for every route at once, and dropped from the components."""
    replaced = False
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema") == {"$ref": _FASTAPI_422}:
                answer["description"] = INVALID[422]["description"]
                answer["content"]["application/json"]["schema"] = {"$ref": f"#/components/schemas/{_APP_422}"}
                replaced = True
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if replaced and _APP_422 not in components:  # no route declared INVALID itself
        model = ValidationErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model.pop("$defs", {}))
        components[_APP_422] = model
    if _FASTAPI_422 not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        if '"#/components/schemas/ValidationError"' not in json.dumps(schema):
            components.pop("ValidationError", None)
    return schema


def _timed_decode(budget: PixelBudget, data: bytes, max_pixels: int, side: int | None) -> tuple[Decoded, float]:
    start = time.perf_counter()
    decoded = decode_upload(budget, data, max_pixels, side)
    return decoded, time.perf_counter() - start


async def decode(pool: DecodePool, data: bytes, max_pixels: int, side: int | None = None) -> tuple[Decoded, float]:
    """The checked RGB image (at least `side` px both ways) and the seconds its decoding took;
    UploadRejected on bad input."""
    return await pool.run(_timed_decode, data, max_pixels, side)


def _budgeted_thumbnail(budget: PixelBudget, path: Path, px: int) -> bytes:
    with Image.open(path) as im:
        pixels = draft_pixels(im, (px, px))
    with budget.hold(pixels):
        return collection.thumbnail(path, px)


async def thumbnail(pool: DecodePool, path: Path, px: int) -> bytes:
    return await pool.run(_budgeted_thumbnail, path, px)


def hit(n: Neighbour, percentile: float) -> SearchHit:
    return SearchHit(id=n.id, score=n.score, percentile=percentile, path=n.path, label=n.label,
                     image_url=f"/images/{n.id}", thumbnail_url=f"/images/{n.id}/thumbnail")


def answer(live: LiveVersion, neighbours: list[Neighbour], k: int, start: float) -> SearchResponse:
    percentiles = live.score_scale.percentile([n.score for n in neighbours]) if neighbours else []
    return SearchResponse(version=live.version, k_requested=k, k_returned=len(neighbours),
                          took_ms=(time.perf_counter() - start) * 1000.0,
                          results=[hit(n, float(p)) for n, p in zip(neighbours, percentiles, strict=True)])
