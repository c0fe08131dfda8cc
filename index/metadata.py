"""The id -> metadata table of a version: one JSON object per line, in the row order of embeddings.npy."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

DESCRIBE_WORKERS = 8  # threads hashing files (I/O bound: reads release the GIL)


@dataclass(frozen=True, slots=True)
class ItemMeta:
    id: int
    path: str  # relative to the collection root
    label: str | None
    width: int | None  # px; None where the file was not readable at indexing time
    height: int | None
    sha256: str | None  # of the file's bytes
    added: str  # UTC, ISO 8601: when the item entered the index

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to add: what the caller knows about an image it embedded with the version's own model."""

    path: str
    label: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None

    @classmethod
    def from_file(cls, file: str | Path, path: str, label: str | None = None) -> NewItem:
        """Describe `file` (size, content hash), recording it under `path` relative to the collection root."""
        width, height, sha = describe_image(file)
        return cls(path, label, width, height, sha)


def display_path(path: str) -> str:
    """A collection path as text any UTF-8 output (JSON, a terminal) can carry. File names that are not UTF-8
    reach Python as surrogate escapes (os.fsdecode), which UTF-8 encoders refuse: here their undecodable bytes
    read U+FFFD. Files are opened by the stored path, never by this text."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def describe_image(file: str | Path) -> tuple[int | None, int | None, str]:
    """(width, height, sha256 of the bytes); width/height None when the bytes are not a readable image."""
    data = Path(file).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(file) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None, None, sha
    return int(width), int(height), sha


def _describe_or_none(file: Path) -> tuple[int | None, int | None, str | None]:
    try:
        return describe_image(file)
    except OSError:
        return None, None, None


def describe_items(rows: list[dict], root: str | Path | None, added: str) -> list[ItemMeta]:
    """Export rows {"id", "path", "label"[, "width", "height", "sha256"]} -> ItemMeta.

    Size and hash come from the row when the export carries them, else from the file under `root`;
    they stay None for files that cannot be read (array datasets such as CIFAR-10 have no files).
    """
    need = [i for i, r in enumerate(rows) if r.get("sha256") is None]
    found: dict[int, tuple] = {}
    if need and root is None:
        log.info("no collection root: size and hash left empty for %d of %d items", len(need), len(rows))
    elif need:
        root = Path(root)
        with ThreadPoolExecutor(DESCRIBE_WORKERS) as pool:
            described = pool.map(lambda i: _describe_or_none(root / rows[i]["path"]), need)
            found = dict(zip(need, described, strict=True))
        missing = sum(1 for i in need if found[i][2] is None)
        if missing:
            log.warning("%d of %d items have no readable file under %s: size and hash left empty",
                        missing, len(rows), root)
    items = []
    for i, r in enumerate(rows):
        width, height, sha = found.get(i, (r.get("width"), r.get("height"), r.get("sha256")))
        items.append(ItemMeta(int(r["id"]), str(r["path"]), r.get("label"), width, height, sha, added))
    return items


class Metadata:
    """Items in row order, with O(1) lookup by id. Immutable once built."""

    def __init__(self, items: list[ItemMeta]):
        self.items = items
        self.ids = np.fromiter((it.id for it in items), dtype=np.int64, count=len(items))  # N
        self._row = {it.id: row for row, it in enumerate(items)}
        if len(self._row) != len(items):
            raise ValueError("duplicate ids in the metadata table")

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: int) -> bool:
        return item_id in self._row

    def row(self, item_id: int) -> int:
        """Row of `item_id` in the table (and in embeddings.npy); KeyError when absent."""
        return self._row[item_id]

    def get(self, item_id: int) -> ItemMeta:
        return self.items[self._row[item_id]]

    @cached_property
    def by_path(self) -> dict[str, int]:
        """path -> id, built on first use (once per table: tables are shared by the versions that link them)."""
        return {it.path: it.id for it in self.items}

    @cached_property
    def by_sha(self) -> dict[str, int]:
        """content hash -> id (the first item with those bytes), built on first use."""
        found: dict[str, int] = {}
        for it in self.items:
            if it.sha256 is not None:
                found.setdefault(it.sha256, it.id)
        return found

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self.items:
            key = "(none)" if it.label is None else it.label
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def write(self, path: str | Path) -> None:
        with open(path, "w") as fh:
            for it in self.items:
                fh.write(json.dumps(it.to_dict()) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Metadata:
        with open(path) as fh:
            return cls([ItemMeta(**json.loads(line)) for line in fh if line.strip()])
