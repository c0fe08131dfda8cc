"""The collection's images: the list (paged, sorted, by label); by id the file, a thumbnail, its neighbours;
adding uploaded images (one or a batch) and deleting one."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import WithJsonSchema
from starlette.concurrency import run_in_threadpool

from index import NewItem, display_path

from ...live import collection
from ...live.browse import Sort
from ...live.version import LiveVersion
from ...live.writes import Added
from ...settings import Settings
from ..auth import API_KEY_HEADER, READ, ReadAccess, WriteAccess
from ..deps import (
    BrowseDep,
    DecoderDep,
    EngineDep,
    LiveDep,
    RateLimited,
    SettingsDep,
    ThumbnailRateLimited,
    WritesDep,
)
from ..schemas import (
    AddedImage,
    ErrorResponse,
    ImageAdded,
    ImageDeleted,
    ImageEntry,
    ImageList,
    ImagesAdded,
    SearchResponse,
)
from ..uploads import IMAGE_FILE, read_limited
from .common import (
    INVALID,
    LIMITED,
    NOT_FOUND,
    UNAVAILABLE,
    UPLOAD_ERRORS,
    WRITE_AUTH,
    answer,
    decode,
    image_parts,
    thumbnail,
)
from .search import K

log = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[int, Path(ge=0, description="image id in the collection")]
Label = Annotated[str | None, Form(pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$",  # FastAPI reads "" as None
                                   description="optional class label (a plain folder name; empty or absent: none)")]
MAX_BATCH_FILES = 32  # files in one POST /images; each within NPID_MAX_UPLOAD_BYTES
ImageUpload = Annotated[UploadFile, WithJsonSchema({"type": "string", "contentMediaType": "application/octet-stream",
                                                   **IMAGE_FILE})]  # a file part of the form
UNWRITABLE = "the server cannot store uploads in its collection folder"
READ_ERRORS = {**NOT_FOUND, **INVALID, **UNAVAILABLE}
NOT_MODIFIED = {304: {"description": "the client's copy (If-None-Match) is current"}}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")


Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="entries to skip, in the chosen order")]
PageSize = Annotated[int, Query(ge=1, le=100, description="entries to return")]
LabelFilter = Annotated[str | None, Query(min_length=1, max_length=255,
                                          description="only images with this label (a first-level folder name)")]


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


def cache_headers(settings: Settings, etag: str) -> dict[str, str]:
    """Revalidate every time (the ETag follows the bytes); never `public` when reads need the key, and keyed by
    it in shared caches."""
    if settings.protect_reads:
        return {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": API_KEY_HEADER}
    return {"ETag": etag, "Cache-Control": "no-cache"}


def not_modified(request: Request, etag: str) -> bool:
    presented = request.headers.get("if-none-match", "")
    return presented.strip() == "*" or etag in (t.strip() for t in presented.split(","))


@router.get("", response_model=ImageList, responses={**INVALID, **LIMITED, **UNAVAILABLE},
            openapi_extra=READ, dependencies=[ReadAccess, RateLimited])
async def list_images(live: LiveDep, browse: BrowseDep, offset: Offset = 0, limit: PageSize = 48,
                      sort: Annotated[Sort, Query(description="newest: by the time each image entered the index, "
                                                              "newest first; path: by path")] = "newest",
                      label: LabelFilter = None) -> ImageList:
    """The collection's images (deleted ones are not in it), one page at a time, with the label counts."""
    page = await run_in_threadpool(browse.page, live, sort, label, offset, limit)
    return ImageList(version=live.version, total=page.total, offset=offset, limit=limit, sort=sort, label=label,
                     labels={display_path(k): v for k, v in page.labels.items()},
                     images=[ImageEntry(id=it.id, path=display_path(it.path),
                                        label=None if it.label is None else display_path(it.label), added=it.added,
                                        image_url=f"/images/{it.id}", thumbnail_url=f"/images/{it.id}/thumbnail")
                             for it in page.items])


@router.get("/{image_id}", response_class=FileResponse, responses={
    200: {"content": {t: {} for t in IMAGE_TYPES}, "description": "the image file"}, **NOT_MODIFIED, **READ_ERRORS},
            openapi_extra=READ, dependencies=[ReadAccess])
async def get_image(request: Request, image_id: ImageId, live: LiveDep, settings: SettingsDep) -> Response:
    path = file_of(live, settings, image_id)
    headers = cache_headers(settings, await run_in_threadpool(collection.etag, path))
    if not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=collection.content_type(path), headers=headers)


@router.get("/{image_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "a small JPEG"}, **NOT_MODIFIED, **READ_ERRORS, **LIMITED},
            openapi_extra=READ, dependencies=[ReadAccess, ThumbnailRateLimited])
async def get_thumbnail(request: Request, image_id: ImageId, live: LiveDep, settings: SettingsDep,
                        decoder: DecoderDep) -> Response:
    path = file_of(live, settings, image_id)
    content_tag = await run_in_threadpool(collection.etag, path)
    headers = cache_headers(settings, f'{content_tag[:-1]}-{settings.thumbnail_px}px"')
    if not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    data = await thumbnail(decoder, path, settings.thumbnail_px)
    return Response(data, media_type="image/jpeg", headers=headers)


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


def _added(a: Added) -> AddedImage:
    return AddedImage(id=a.item.id, path=display_path(a.item.path), label=a.item.label,
                      created=a.created, image_url=f"/images/{a.item.id}",
                      thumbnail_url=f"/images/{a.item.id}/thumbnail")


@router.post("", status_code=201, response_model=ImageAdded | ImagesAdded, responses={
    200: {"model": ImageAdded | ImagesAdded, "description": "every image was already in the collection"},
    **UPLOAD_ERRORS, **WRITE_AUTH}, dependencies=[WriteAccess, RateLimited], openapi_extra=image_parts("file"))
async def add_images(request: Request, response: Response,
                     file: Annotated[list[ImageUpload], File(description=f"the image(s) to add: repeat the field "
                                                                         f"for a batch, at most {MAX_BATCH_FILES}",
                                                             min_length=1, max_length=MAX_BATCH_FILES)],
                     live: LiveDep, writes: WritesDep, decoder: DecoderDep, settings: SettingsDep,
                     label: Label = None) -> ImageAdded | ImagesAdded:
    """Add images to the collection folder and, as one new published version, to the index (embedded with the
    live model). Each is stored under <collection root>/<label or "uploads">/<content hash>.<ext>. Bytes the
    collection already holds (by SHA-256, wherever the file lies) are not added again: their existing id is
    answered. One file answers ImageAdded; several answer ImagesAdded, in request order."""
    if len((await request.form()).getlist("label")) > 1:  # the form as parsed for the parameters (cached)
        raise RequestValidationError([{"loc": ("body", "label"), "msg": "one label per request, not several",
                                       "type": "too_many_values"}])
    decoded = []
    for upload in file:  # every file is checked before any is stored: a bad one refuses the whole batch
        data = await read_limited(upload, settings.max_upload_bytes)
        image, _ = await decode(decoder, data, settings.max_pixels, live.embedder.pre.resize)
        decoded.append((data, image))
    folder = settings.upload_subdir if label is None else label
    pairs = []
    for data, image in decoded:
        sha = hashlib.sha256(data).hexdigest()
        indexed = live.find_sha(sha)
        path = indexed.path if indexed is not None else await _store_file(settings, folder, data)
        pairs.append((image.image, NewItem(path, label, *image.size, sha)))
    added, live = await run_in_threadpool(writes.add, pairs)  # VersionRefused: errors.py
    if not any(a.created for a in added):
        response.status_code = 200
    if len(added) == 1:
        a = added[0]
        return ImageAdded(id=a.item.id, path=display_path(a.item.path), label=a.item.label,
                          version=live.version, collection_size=live.size, image_url=f"/images/{a.item.id}",
                          thumbnail_url=f"/images/{a.item.id}/thumbnail")
    return ImagesAdded(version=live.version, collection_size=live.size, images=[_added(a) for a in added])


async def _store_file(settings: Settings, folder: str, data: bytes) -> str:
    try:
        return await run_in_threadpool(collection.save_upload, settings.collection_root, folder, data)
    except OSError as e:  # read-only mount, full disk: the server's problem, said plainly
        log.error("cannot store an upload under %s/%s: %s", settings.collection_root, folder, e)
        raise HTTPException(503, UNWRITABLE) from None


@router.delete("/{image_id}", response_model=ImageDeleted, responses={
    **NOT_FOUND, 409: {"model": ErrorResponse, "description": "it is the last image: the collection cannot be empty"},
    **INVALID, **WRITE_AUTH, **UNAVAILABLE}, dependencies=[WriteAccess])
async def delete_image(image_id: ImageId, live: LiveDep, writes: WritesDep, settings: SettingsDep) -> ImageDeleted:
    """Remove an image from the index (a new published version). An upload (under the upload folder) loses its
    file too; any other file stays where it is, read-only for the API, and its path is tombstoned: re-index and
    retrain jobs leave it out. The id is never reused."""
    if live.item(image_id) is None:
        raise no_image(image_id)
    try:
        item, live = await run_in_threadpool(writes.remove, image_id)  # EmptyCollectionError, VersionRefused
    except KeyError:  # deleted by another request meanwhile
        raise no_image(image_id) from None
    file_deleted = False
    if collection.is_upload(item.path, settings.upload_subdir):
        file_deleted = await run_in_threadpool(collection.delete_upload, settings.collection_root, item.path)
    return ImageDeleted(id=item.id, path=display_path(item.path), version=live.version,
                        collection_size=live.size, file_deleted=file_deleted)
