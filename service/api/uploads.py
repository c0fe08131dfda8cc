"""Upload safety: a bounded read, the format decided from the bytes, a pixel limit, then one decoder.

Checks run cheapest first and nothing is decoded before it is known to be allowed:

    1. size, counted while reading        -> 413 (the request body itself is capped by BodyLimitMiddleware)
    2. empty                              -> 422
    3. magic bytes: JPEG, PNG, WebP, GIF, BMP, TIFF only (never the filename or content type) -> 415
    4. header parse, restricted to that one format -> 422 if it fails
    5. width x height from the header > max_pixels (Pillow's warning zone included) -> 413
    6. decode with `trainer.data.load_rgb`, the decoder that built the collection -> 422 if it fails

`decode_upload` is blocking: run it in the DecodePool (service/api/decoding.py), which bounds threads and pixels.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile
from PIL import Image

from trainer.data import load_rgb

from ..live.formats import sniff_format
from .decoding import PixelBudget, shrink

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes per read of an upload

# OpenAPI: an upload field holds an image file: a string format of its own ("binary" would promise that any
# bytes are accepted, while only decodable images in the formats above are), never empty; its parts are image/*
# (the multipart encoding: routers/common.py image_parts)
IMAGE_FILE = {"format": "image", "minLength": 1}

EMPTY = "empty file"
UNSUPPORTED = "unsupported image format: send JPEG, PNG, WebP, GIF, BMP or TIFF"
CORRUPT = "corrupt or truncated image"


def too_large(max_bytes: int) -> str:
    return f"upload too large: the limit is {max_bytes} bytes"


def too_many_pixels(max_pixels: int) -> str:
    return f"image too large: the limit is {max_pixels} pixels (width x height)"


class UploadRejected(HTTPException):
    """An upload refused for a stated reason; rendered as JSON {"detail": ...} like any HTTPException."""


async def read_limited(file: UploadFile, max_bytes: int) -> bytes:
    """The whole upload, refused with 413 as soon as it passes `max_bytes`."""
    chunks, total = [], 0
    while chunk := await file.read(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise UploadRejected(413, too_large(max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def draft_pixels(im: Image.Image, draft: tuple[int, int] | None) -> int:
    """Pixels that load_rgb(..., draft) will decode for this opened (not yet loaded) image."""
    if draft is not None and im.format == "JPEG":
        im.draft("RGB", draft)  # reads the header only: size becomes the reduced one
    return im.size[0] * im.size[1]


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB; a JPEG may come out smaller than its file (draft mode), never below `side`
    size: tuple[int, int]  # (width, height) of the file as stored


def decode_upload(budget: PixelBudget, data: bytes, max_pixels: int, side: int | None = None) -> Decoded:
    """Checked bytes -> RGB image exactly as the collection was decoded; UploadRejected otherwise.

    `side`: the smallest width and height the caller needs (a JPEG is decoded at a reduced scale still at
    least that large, any image much larger is box-reduced to about twice that before it leaves). The decode
    holds its pixels from `budget` while it runs. Blocking: run it in a DecodePool.
    """
    if not data:
        raise UploadRejected(422, EMPTY)
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UploadRejected(415, UNSUPPORTED)
    draft = None if side is None else (side, side)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:  # header only: no pixel data yet
            size, pixels = im.size, draft_pixels(im, draft)
    except Image.DecompressionBombError:  # Pillow's own hard limit (2x MAX_IMAGE_PIXELS)
        raise UploadRejected(413, too_many_pixels(max_pixels)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad headers
        log.info("upload refused, unreadable %s header: %s: %s", fmt, type(e).__name__, e)
        raise UploadRejected(422, CORRUPT) from None
    if size[0] * size[1] > max_pixels:
        raise UploadRejected(413, too_many_pixels(max_pixels))
    try:
        with budget.hold(pixels):
            image = load_rgb(io.BytesIO(data), draft)
            return Decoded(image if side is None else shrink(image, side), size)
    except Exception as e:  # truncated or corrupt pixel data, bad EXIF, ...: never a 500
        log.info("upload refused, undecodable %s %dx%d: %s: %s", fmt, *size, type(e).__name__, e)
        raise UploadRejected(422, CORRUPT) from None
