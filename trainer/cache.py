"""Decode-once image cache: every image of a folder decoded once, fitted to the stored square, kept as uint8.

Layout, one directory per (collection root, preprocessing geometry) under the cache root:
    index.json        {"format", "stored_size", "image_size", "squash", "data": "images-<token>.u8",
                       "entries": {relpath: [bytes, mtime_ns]}  (row i <-> i-th entry, in path order),
                       "bad": {relpath: [bytes, mtime_ns, reason]}}
    images-<token>.u8 uint8 [n, S, S, 3], memory-mapped by training and embedding
    lock              flock: one builder at a time (a training job and a re-index never interleave writes)

A file is reused while its (size, mtime) is unchanged; a changed or new file is decoded, a removed one
dropped, a bad one remembered with its reason so it is neither re-decoded nor silently lost. A rebuild
writes a new data file and then swaps index.json atomically, so a reader or a crash never sees a torn
cache. Decoding runs on threads (PIL releases the GIL), which also works inside Celery's prefork child,
where worker processes cannot start children.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from durable import atomic_write

from .data import ArrayImages, Collection, scan_folder, to_rgb
from .preprocess import Preprocess
from .progress import Tick

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MAX_DECODE_PIXELS = 50_000_000  # px after draft: larger files are skipped (bounds a decode thread's memory)
MAX_ASPECT = 20  # long / short side: a 1xN strip has no picture in it, and resizing it would explode
DRAFT_MARGIN = 2  # JPEG draft mode (DCT scaling) keeps at least 2x the stored side before the resize
FREE_DISK_MARGIN = 1 << 30  # bytes left free on the cache's disk after a build
COPY_ROWS = 256  # rows copied per step when a rebuild carries rows over from the old data file


class CacheUnavailable(RuntimeError):
    """The cache cannot be built within the disk budget; the caller falls back to the PIL loader."""


class BadImage(ValueError):
    """A file the collection skips; the message is the reason recorded in the run log."""


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "npid-search" / "images"


def decode_square(path: str | Path, pre: Preprocess) -> np.ndarray:
    """One file -> uint8 [S, S, 3], the stored square of `pre` (see Preprocess.fit).

    Raises BadImage("<kind>: <detail>"), kind one of: empty file, not an image, extreme aspect, too large,
    corrupt. Memory stays bounded: the size is checked from the header before any pixel is decoded.
    """
    if os.path.getsize(path) == 0:
        raise BadImage("empty file: 0 bytes")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
                raise BadImage(f"extreme aspect: {width}x{height} px, beyond 1:{MAX_ASPECT}")
            if im.format == "JPEG":  # decode at a fraction of the size in the DCT: huge photos stay cheap
                k = DRAFT_MARGIN * pre.stored_size / min(width, height)
                if k < 1:
                    im.draft(None, (math.ceil(width * k), math.ceil(height * k)))
            if im.size[0] * im.size[1] > MAX_DECODE_PIXELS:
                raise BadImage(f"too large: {width}x{height} px, over {MAX_DECODE_PIXELS // 1_000_000} MP")
            rgb = to_rgb(im)
        return np.asarray(pre.fit(rgb), dtype=np.uint8)
    except UnidentifiedImageError as e:
        raise BadImage(f"not an image: {e}") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated data, broken headers, bad EXIF
        if isinstance(e, BadImage):
            raise
        raise BadImage(f"corrupt: {type(e).__name__}: {e}") from None


@dataclass
class CacheReport:
    """What one build did: counts for the run log and the job record."""

    reused: int
    decoded: int
    skipped: list[tuple[str, str]]  # (relative path, reason)
    seconds: float
    bytes: int

    def summary(self) -> str:
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        bad = ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) or "none"
        return (f"image cache: {self.reused} reused, {self.decoded} decoded in {self.seconds:.1f}s, "
                f"{len(self.skipped)} skipped ({bad}), {self.bytes / 2**20:.0f} MiB")


class CachedFolder(ArrayImages):
    """An image folder as its cached squares: uint8 [n, S, S, 3] memory-mapped, plus the folder's root."""

    def __init__(self, root: Path, images: np.ndarray, collection: Collection, skipped: list[tuple[str, str]],
                 report: CacheReport):
        super().__init__(images, collection)
        self.root = root
        self.skipped = skipped
        self.report = report


class ImageCache:
    """The cache of one collection root at one preprocessing geometry."""

    def __init__(self, cache_root: str | Path, collection_root: str | Path, pre: Preprocess):
        self.root = Path(collection_root).resolve()
        self.pre = pre
        geometry = f"s{pre.stored_size}-c{pre.image_size}{'-squash' if pre.squash else ''}"
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.dir = Path(cache_root) / f"{self.root.name}-{digest}" / geometry
        self.row_bytes = pre.stored_size ** 2 * 3

    def _read_index(self) -> dict:
        try:
            index = json.loads((self.dir / "index.json").read_text())
        except (OSError, ValueError):
            return {}
        same = (index.get("format") == CACHE_FORMAT and index.get("stored_size") == self.pre.stored_size
                and (self.dir / index.get("data", "-")).exists())
        return index if same else {}

    def _check_budget(self, rows: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        need = rows * self.row_bytes
        free = shutil.disk_usage(self.dir).free
        if need + FREE_DISK_MARGIN > free:
            raise CacheUnavailable(f"the image cache needs {need / 2**30:.1f} GiB at {self.dir}, "
                                   f"{free / 2**30:.1f} GiB are free")

    def build(self, paths: list[str], threads: int = 1,
              progress: bool = False, tick: Tick | None = None) -> tuple[np.ndarray, list[str], CacheReport]:
        """The cached squares of `paths` (relative to the root), decoding only what changed.

        -> (uint8 [n, S, S, 3] read-only memmap, the n readable paths in order, the report).
        """
        start = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build_locked(paths, threads, progress, start, tick)

    def _build_locked(self, paths: list[str], threads: int, progress: bool, start: float,
                      tick: Tick | None) -> tuple[np.ndarray, list[str], CacheReport]:
        index = self._read_index()
        entries: dict = index.get("entries", {})
        bad: dict = index.get("bad", {})
        old_rows = {p: i for i, p in enumerate(entries)}
        stamps = {}
        for p in paths:
            st = (self.root / p).stat()
            stamps[p] = [st.st_size, st.st_mtime_ns]
        skipped = {p: bad[p][2] for p in paths if p in bad and bad[p][:2] == stamps[p]}
        todo = [p for p in paths if p not in skipped]
        reuse = {p: old_rows[p] for p in todo if p in entries and entries[p] == stamps[p]}
        unchanged = list(entries) == todo and len(reuse) == len(todo)
        data_name = index.get("data")
        if not unchanged:
            self._check_budget(len(todo))
            kept, new_skips, data_name = self._rewrite(index, todo, reuse, threads, progress, tick)
            skipped.update(new_skips)
            new_index = {"format": CACHE_FORMAT, "stored_size": self.pre.stored_size,
                         "image_size": self.pre.image_size, "squash": self.pre.squash, "data": data_name,
                         "entries": {p: stamps[p] for p in kept},
                         "bad": {p: [*stamps[p], reason] for p, reason in skipped.items()}}
            atomic_write(self.dir / "index.json", json.dumps(new_index).encode())
            for stale in self.dir.glob("images-*.u8"):
                if stale.name != data_name:
                    stale.unlink()
            entries = new_index["entries"]
        kept_paths = list(entries)
        n = len(kept_paths)
        s = self.pre.stored_size
        images = (np.memmap(self.dir / data_name, dtype=np.uint8, mode="r", shape=(n, s, s, 3)) if n
                  else np.zeros((0, s, s, 3), np.uint8))
        report = CacheReport(reused=len(reuse), decoded=len(todo) - len(reuse), skipped=sorted(skipped.items()),
                             seconds=time.perf_counter() - start, bytes=n * self.row_bytes)
        return images, kept_paths, report

    def _rewrite(self, index: dict, todo: list[str], reuse: dict[str, int], threads: int, progress: bool,
                 tick: Tick | None) -> tuple[list[str], dict[str, str], str]:
        """A new data file holding `todo` in order: reused rows copied, the rest decoded; bad rows squeezed out.
        `tick(decoded, to decode)` after each image; when it raises (a cancel) the decodes not yet started are
        dropped and the unfinished data file, never named by index.json, is removed by the next rewrite."""
        s = self.pre.stored_size
        data_name = f"images-{secrets.token_hex(6)}.u8"
        path = self.dir / data_name
        with open(path, "wb") as fh:
            fh.truncate(max(len(todo), 1) * self.row_bytes)
        new = np.memmap(path, dtype=np.uint8, mode="r+", shape=(max(len(todo), 1), s, s, 3))
        if reuse:
            old = np.memmap(self.dir / index["data"], dtype=np.uint8, mode="r",
                            shape=(len(index["entries"]), s, s, 3))
            pairs = [(i, reuse[p]) for i, p in enumerate(todo) if p in reuse]
            for k in range(0, len(pairs), COPY_ROWS):
                dst, src = zip(*pairs[k:k + COPY_ROWS], strict=True)
                new[list(dst)] = old[list(src)]  # rows x S x S x 3
            del old
        missing = [i for i, p in enumerate(todo) if p not in reuse]

        def decode(i: int, out: np.ndarray = new) -> tuple[int, str | None]:
            try:
                out[i] = decode_square(self.root / todo[i], self.pre)
                return i, None
            except BadImage as e:
                return i, str(e)

        failed: dict[int, str] = {}
        pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode")
        try:
            results = pool.map(decode, missing)
            for n, (i, reason) in enumerate(tqdm(results, total=len(missing), desc="decoding images",
                                                 disable=not progress, leave=False, unit="img"), 1):
                if reason is not None:
                    failed[i] = reason
                if tick is not None:
                    tick(n, len(missing))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        keep = [i for i in range(len(todo)) if i not in failed]
        if failed:  # squeeze the failed rows out, moving later rows up (dst <= src: never overwrites a source)
            for dst, src in enumerate(keep):
                if dst != src:
                    new[dst] = new[src]
        new.flush()
        del new
        with open(path, "r+b") as fh:
            fh.truncate(len(keep) * self.row_bytes)
            os.fsync(fh.fileno())
        return [todo[i] for i in keep], {todo[i]: r for i, r in failed.items()}, data_name


def cached_folder(root: str | Path, pre: Preprocess, cache_root: str | Path | None = None, limit: int = 0,
                  threads: int = 1, progress: bool = False, tick: Tick | None = None) -> CachedFolder:
    """The image folder `root` decoded through the cache: bad files skipped, counted and logged; `tick` after
    each image decoded (trainer/progress.py)."""
    collection = scan_folder(root)
    paths = collection.paths[:limit] if limit else collection.paths
    cache = ImageCache(cache_root or default_cache_root(), root, pre)
    images, kept, report = cache.build(paths, threads, progress, tick)
    for path, reason in report.skipped:
        log.warning("skipping %s (%s)", path, reason)
    log.info("%s", report.summary())
    if not kept:
        raise ValueError(f"no readable images under {root} ({len(report.skipped)} skipped)")
    row = {p: i for i, p in enumerate(collection.paths)}
    rows = [row[p] for p in kept]
    labels = None if collection.labels is None else collection.labels[rows]
    return CachedFolder(Path(root), images, Collection(kept, labels, collection.classes), report.skipped, report)
