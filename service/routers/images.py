"""The collection's images by id: the file, a thumbnail, its neighbours; and adding an uploaded image."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from index import NewItem

from .. import collection
from ..auth import READ, ReadAccess, WriteAccess
from ..deps import DecoderDep, EngineDep, LiveDep, RateLimited, SettingsDep, ThumbnailRateLimited
from ..engine import LiveVersion
from ..schemas import ImageAdded, SearchResponse
from ..settings import Settings
from ..uploads import IMAGE_FILE, read_limited
from .common import INVALID, LIMITED, NOT_FOUND, UNAVAILABLE, UPLOAD_ERRORS, WRITE_AUTH, answer, decode, thumbnail
from .search import K

log = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[int, Path(ge=0, description="image id in the collection")]
Label = Annotated[str | None, Form(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                   description="optional class label (a plain folder name)")]
CACHE = {"Cache-Control": "public, max-age=3600"}
UNWRITABLE = "the server cannot store uploads in its collection folder"
READ_ERRORS = {**NOT_FOUND, **INVALID, **UNAVAILABLE}


def no_image(image_id: int) -> HTTPException:
    return HTTPException(404, f"no image with id {image_id}")


def file_of(live: LiveVersion, settings: Settings, image_id: int):
    item = live.item(image_id)
    if item is None:
        raise no_image(image_id)
    try:
        return collection.resolve(settings.collection_root, item.path)
    except collection.ImageFileMissing:
        raise HTTPException(404, f"image {image_id} is indexed but its file is missing") from None


@router.get("/{image_id}", response_class=FileResponse, responses={
    200: {"content": {t: {} for t in ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp",
                                      "image/tiff")}, "description": "the image file"}, **READ_ERRORS},
            openapi_extra=READ, dependencies=[ReadAccess])
async def get_image(image_id: ImageId, live: LiveDep, settings: SettingsDep) -> FileResponse:
    path = file_of(live, settings, image_id)
    return FileResponse(path, media_type=collection.content_type(path), headers=CACHE)


@router.get("/{image_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "a small JPEG"}, **READ_ERRORS, **LIMITED},
            openapi_extra=READ, dependencies=[ReadAccess, ThumbnailRateLimited])
async def get_thumbnail(image_id: ImageId, live: LiveDep, settings: SettingsDep, decoder: DecoderDep) -> Response:
    path = file_of(live, settings, image_id)
    data = await thumbnail(decoder, path, settings.thumbnail_px)
    return Response(data, media_type="image/jpeg", headers=CACHE)


@router.get("/{image_id}/similar", response_model=SearchResponse, responses={**READ_ERRORS, **LIMITED},
            openapi_extra=READ, dependencies=[ReadAccess, RateLimited])
async def similar(image_id: ImageId, live: LiveDep, engine: EngineDep, k: K = 10,
                  min_score: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None) -> SearchResponse:
    """Neighbours of an image already in the collection (itself excluded)."""
    start = time.perf_counter()
    if live.item(image_id) is None:
        raise no_image(image_id)
    neighbours = await engine.run(live.similar, image_id, k, min_score)
    return answer(live, neighbours, k, start)


@router.post("", status_code=201, response_model=ImageAdded, responses={
    200: {"model": ImageAdded, "description": "the same image was already in the collection"},
    **UPLOAD_ERRORS, **WRITE_AUTH}, dependencies=[WriteAccess, RateLimited])
async def add_image(response: Response,
                    file: Annotated[UploadFile, File(description="the image to add (JPEG, PNG, WebP, GIF, BMP or "
                                                                 "TIFF)", json_schema_extra=IMAGE_FILE)],
                    live: LiveDep, engine: EngineDep, decoder: DecoderDep, settings: SettingsDep,
                    label: Label = None) -> ImageAdded:
    """Add an image to the collection folder and, as a new published version, to the index (embedded with
    the live model). It is stored under <collection root>/<label or "uploads">/<content hash>.<ext>."""
    data = await read_limited(file, settings.max_upload_bytes)
    decoded, _ = await decode(decoder, data, settings.max_pixels, live.embedder.pre.resize)
    folder = settings.upload_subdir if label is None else label
    try:
        path = await run_in_threadpool(collection.save_upload, settings.collection_root, folder, data)
    except OSError as e:  # read-only mount, full disk: the server's problem, said plainly
        log.error("cannot store an upload under %s/%s: %s", settings.collection_root, folder, e)
        raise HTTPException(503, UNWRITABLE) from None
    item = NewItem(path, label, *decoded.size, hashlib.sha256(data).hexdigest())
    added, live, created = await run_in_threadpool(engine.add, decoded.image, item)  # VersionRefused: errors.py
    if not created:
        response.status_code = 200
    return ImageAdded(id=added.id, path=added.path, label=added.label, version=live.version,
                      collection_size=live.size, image_url=f"/images/{added.id}",
                      thumbnail_url=f"/images/{added.id}/thumbnail")
