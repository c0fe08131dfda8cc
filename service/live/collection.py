"""The image folder on disk: id paths resolved safely, content types, thumbnails, uploads written atomically.

Paths only ever come from the index metadata (never from a request), and are still checked to stay
inside the collection root.
"""

from __future__ import annotations

import hashlib
import io
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from durable import atomic_write
from index import ItemMeta, display_path
from trainer.data import load_rgb
from trainer.embed import Embedder

from .formats import CONTENT_TYPES, EXTENSIONS, sniff_format

log = logging.getLogger(__name__)

THUMBNAIL_CACHE = 4096  # thumbnails kept in memory (a few kB each)
DIGEST_CACHE = 65536  # file hashes (ETags) kept in memory


class ImageFileMissing(LookupError):
    """The index names a file that is not (or no longer) under the collection root."""


def resolve(root: Path, relative: str) -> Path:
    """root / relative, refused if it leaves the root (.., absolute paths, symlinks out) or is no file."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ImageFileMissing(relative)
    return path


def etag(path: Path) -> str:
    """A strong ETag from the SHA-256 of the file's bytes (cached while its size and mtime stay)."""
    st = path.stat()
    return f'"{_sha256(str(path), st.st_mtime_ns, st.st_size)}"'


@lru_cache(maxsize=DIGEST_CACHE)
def _sha256(path: str, mtime_ns: int, size: int) -> str:  # mtime and size key the cache
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_upload(relative: str, upload_subdir: str) -> bool:
    """Whether the collection path lies in the folder the API writes unlabelled uploads to."""
    return relative.startswith(f"{upload_subdir}/")


def delete_upload(root: Path, relative: str) -> bool:
    """Remove an uploaded file (kept inside the root); False when it was already gone."""
    try:
        path = resolve(root, relative)
    except ImageFileMissing:
        return False
    path.unlink(missing_ok=True)
    return True


def read_images(root: Path, items: list[ItemMeta]) -> tuple[list[Image.Image], list[ItemMeta]]:
    """Decode the files of `items` (like the collection); unreadable or vanished ones are logged and left out."""
    images, readable = [], []
    for item in items:
        try:
            images.append(load_rgb(resolve(root, item.path)))
            readable.append(item)
        except (ImageFileMissing, OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("image %d (%s) cannot be read: %s", item.id, display_path(item.path), e)
    return images, readable


def file_embedder(root: Path, device: str):
    """index's Embed callback: (model dir, items) -> (vectors, items embedded), reading the items' files under
    `root` and embedding them with the model of that version directory. Used to carry images onto a model."""

    def embed(model_dir: Path, items: list[ItemMeta]) -> tuple[np.ndarray, list[ItemMeta]]:
        embedder = Embedder.from_dir(model_dir, device)
        images, readable = read_images(root, items)
        return embedder.embed(images), readable  # M x D

    return embed


def embed_image_file(version_dir: Path, image: str) -> np.ndarray:
    """An image file embedded with a version's own model and preprocessing -> 1 x D (`npid index search --image`:
    the index itself knows no models)."""
    return Embedder.from_dir(version_dir).embed([load_rgb(image)])


def content_type(path: Path) -> str:
    """From the file's first bytes, like uploads; never from its name."""
    with open(path, "rb") as fh:
        fmt = sniff_format(fh.read(16))
    return CONTENT_TYPES.get(fmt or "", "application/octet-stream")


def thumbnail(path: Path, px: int) -> bytes:
    """A JPEG at most px x px (aspect kept), decoded like the collection. Blocking: call off the loop."""
    st = path.stat()
    return _thumbnail(str(path), st.st_mtime_ns, st.st_size, px)


@lru_cache(maxsize=THUMBNAIL_CACHE)
def _thumbnail(path: str, mtime_ns: int, size: int, px: int) -> bytes:  # mtime and size key the cache
    img = load_rgb(path, draft=(px, px))  # a JPEG decodes at the smallest scale still >= px
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def save_upload(root: Path, folder: str, data: bytes) -> str:
    """Write an accepted upload as <root>/<folder>/<sha256 prefix>.<ext>, atomically; returns the relative path.

    The name is the content hash, so the same bytes always land on the same path.
    """
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ValueError("save_upload takes bytes already accepted by uploads.decode_upload")
    relative = f"{folder}/{hashlib.sha256(data).hexdigest()[:24]}{EXTENSIONS[fmt]}"
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return relative
    atomic_write(target, data)
    return relative
