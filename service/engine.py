"""The live (model, index) pair and its hot swap.

One `LiveVersion` serves at a time: an index version's Searcher together with the Embedder built from
the same version's model.pt + preprocess.json, so a query is always embedded by the model that embedded
the collection it is searched against.

`Engine.check_for_new_version()` reads the store's CURRENT pointer (one small file: cheap enough to poll
every couple of seconds, which a background thread does); when it names another version, `reload()`
loads and validates it beside the old one, then swaps the reference in one assignment. Requests take
`engine.live` once and finish on it, so in-flight work completes on the old version while new requests
get the new one; the old version is freed when its last request ends. A version that fails to load or
validate is refused and logged, the old one keeps serving, and it is not retried until the pointer
moves again. The jobs code calls `check_for_new_version()` (or `reload(version)`) right after publishing.

A version made by an add or a delete shares its base segment with the live one (index/delta.py): it is
loaded in O(delta), reusing the live segment and model, so an add is searchable within milliseconds. When
the delta has grown past `compact_threshold(size)`, a background thread folds it into a new segment
(`ArtifactStore.compact`); the poller swaps to the compacted version when it is published.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import anyio
import numpy as np
from PIL import Image

from index import (
    ArtifactStore,
    Embed,
    IndexStoreError,
    ItemMeta,
    LoadedVersion,
    NewItem,
    VersionConflictError,
    display_path,
)
from trainer.embed import Embedder

from .metrics import Metrics
from .scores import ScoreScale

log = logging.getLogger(__name__)

T = TypeVar("T")
ADD_ATTEMPTS = 3  # an add that races another writer re-embeds with the new current version and retries
PROBE_GREY = 128  # pixel value of the probe image every new version must embed and search
COMPACT_MIN_DELTA = 2048  # rows added + ids removed before a compaction is worth its O(collection) rewrite
COMPACT_FRACTION = 0.05  # ... or this fraction of the collection, whichever is larger


def compact_threshold(size: int) -> int:
    """Delta size from which the background compaction runs: searching the delta exactly and filtering
    removed ids stays a small part of a query below it."""
    return max(COMPACT_MIN_DELTA, int(COMPACT_FRACTION * size))


class VersionRefused(RuntimeError):
    """A version could not be loaded or failed validation; the previous one (if any) keeps serving."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    id: int
    score: float
    path: str
    label: str | None


def _neighbour(hit) -> Neighbour:
    label = hit.item.label  # a first-level folder name: as little UTF-8 as any path
    return Neighbour(hit.id, hit.score, display_path(hit.item.path), None if label is None else display_path(label))


@dataclass(frozen=True, slots=True)
class Added:
    item: ItemMeta
    created: bool  # False: the same bytes were already in the collection (item is that image)


class LiveVersion:
    """A loaded version: searcher + embedder + when it went live. Read-only, shared by all requests."""

    def __init__(self, loaded: LoadedVersion, embedder: Embedder, score_scale: ScoreScale | None = None):
        """score_scale: the previous version's, when this one shares its model and base segment (an add)."""
        self.loaded = loaded
        self.version = loaded.version
        self.directory = loaded.directory
        self.manifest = loaded.manifest
        self.searcher = loaded.searcher
        self.embedder = embedder
        # cosines of random pairs of this version's images: a hit's cosine -> percentile (service/scores.py)
        self.score_scale = score_scale or ScoreScale.of_vectors(self.searcher.vectors)
        self.loaded_at = datetime.now(timezone.utc)

    @property
    def size(self) -> int:
        return self.searcher.ntotal

    @property
    def dim(self) -> int:
        return self.searcher.dim

    @property
    def model_digest(self) -> tuple[str, str]:
        """Checksums of model.pt and preprocess.json: equal digests, same embedder."""
        files = self.manifest["files"]
        return files["model.pt"]["sha256"], files["preprocess.json"]["sha256"]

    @property
    def delta_size(self) -> int:
        return self.searcher.delta.size

    @property
    def quality(self) -> dict | None:
        return self.manifest.get("quality")

    @property
    def knn(self) -> dict | None:
        return ((self.manifest.get("training") or {}).get("metrics") or {}).get("knn")

    def item(self, image_id: int) -> ItemMeta | None:
        metadata = self.searcher.metadata
        return metadata.get(image_id) if image_id in metadata else None

    def find_sha(self, sha256: str) -> ItemMeta | None:
        """The image with these bytes, if the collection holds it."""
        return self.searcher.metadata.find_sha(sha256)

    def embed(self, image: Image.Image) -> np.ndarray:
        return self.embedder.embed([image])  # 1 x D

    def query(self, image: Image.Image, k: int, min_score: float | None) -> tuple[list[Neighbour], dict]:
        """Neighbours of a decoded RGB image, and the seconds of each stage {"embed", "search"}."""
        t0 = time.perf_counter()
        vector = self.embed(image)
        t1 = time.perf_counter()
        hits = self.searcher.search(vector, k, min_score)[0]
        t2 = time.perf_counter()
        return [_neighbour(h) for h in hits], {"embed": t1 - t0, "search": t2 - t1}

    def similar(self, image_id: int, k: int, min_score: float | None) -> list[Neighbour]:
        """Neighbours of a collection image by its stored embedding, the image itself left out."""
        hits = self.searcher.search(self.searcher.vector(image_id), min(k + 1, self.size), min_score)[0]
        return [_neighbour(h) for h in hits if h.id != image_id][:k]

    def validate(self) -> None:
        """Refuse a version whose model and index cannot work together; raises ValueError."""
        if self.embedder.dim != self.searcher.dim:
            raise ValueError(f"model embeds in {self.embedder.dim} dimensions, the index holds "
                             f"{self.searcher.dim}")
        if self.size == 0:
            raise ValueError("the index is empty")
        side = self.embedder.pre.image_size
        probe = self.embed(Image.new("RGB", (side, side), (PROBE_GREY,) * 3))  # 1 x D
        if probe.shape != (1, self.dim) or not np.isfinite(probe).all():
            raise ValueError("the model returns non-finite embeddings")
        if abs(float(np.linalg.norm(probe)) - 1.0) > 1e-3:
            raise ValueError("the model's embeddings are not unit vectors")
        hits = self.searcher.search(probe, 1)[0]
        if not hits or not np.isfinite(hits[0].score):
            raise ValueError("the index answers no neighbour for a probe query")


class Engine:
    """Holds the live version, swaps in new ones, adds images. Thread-safe; blocking methods are meant
    for threads (the poller, request worker threads), never for the event loop."""

    def __init__(self, artifacts_dir: str | Path, device: str = "cpu", poll_interval_s: float = 2.0,
                 inference_concurrency: int = 1, metrics: Metrics | None = None):
        self.store = ArtifactStore(artifacts_dir)
        self.device = device
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics or Metrics()
        self.limiter = anyio.CapacityLimiter(inference_concurrency)  # model calls at once
        self.not_ready_reason: str | None = f"no index version has been published in {artifacts_dir}"
        self._live: LiveVersion | None = None
        self._refused: str | None = None  # last version refused: not retried until CURRENT moves
        self._reload_lock = threading.Lock()  # one load and swap at a time
        self._add_lock = threading.Lock()  # one add or delete at a time from this process
        self._compacting: threading.Thread | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.metrics.watch(self._state)

    # ---------------------------------------------------------------------------------- state

    @property
    def live(self) -> LiveVersion | None:
        """The version serving now (None before the first load). Take it once per request."""
        return self._live

    def _state(self) -> tuple[str | None, int]:
        live = self._live
        return (None, 0) if live is None else (live.version, live.size)

    # ---------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the current version (if there is one) and start polling CURRENT."""
        self.check_for_new_version()
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="npid-version-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
        if self._compacting is not None:
            self._compacting.join(timeout=60)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_for_new_version()
            except Exception:  # the poller must outlive any surprise: log it and poll again
                log.exception("version check failed")

    # ---------------------------------------------------------------------------------- swapping

    def check_for_new_version(self) -> bool:
        """Swap to the version CURRENT names if it is new (and was not refused). True if swapped."""
        try:
            current = self.store.current_version()
        except IndexStoreError as e:  # an unreadable pointer: keep serving what we have
            log.warning("cannot read the current version: %s", e)
            return False
        live = self._live
        if current is None or current == self._refused or (live is not None and live.version == current):
            return False
        try:
            self.reload(current)
        except VersionRefused:
            return False
        return True

    def reload(self, version: str | None = None) -> LiveVersion:
        """Load `version` (default: the current one) beside the live one, validate it, swap.

        Raises VersionRefused, after logging it, when the version cannot serve; the live one stays.
        """
        with self._reload_lock:
            old = self._live
            version = version or self.store.current_version()
            if version is None:
                raise VersionRefused(self.not_ready_reason)
            if old is not None and old.version == version:
                return old
            start = time.perf_counter()
            try:
                new = self._load(version, old)
            except Exception as e:  # any fault of a new version: refuse it, keep serving the old one
                self._refused = version
                self.metrics.swaps.labels("refused").inc()
                serving = "nothing" if old is None else old.version
                log.error("refused version %s (still serving %s): %s: %s", version, serving,
                          type(e).__name__, e)
                if old is None:
                    self.not_ready_reason = f"index version {version} could not be loaded: {e}"
                raise VersionRefused(f"version {version} refused: {e}") from e
            self._live = new  # the swap: one reference assignment, model and index together
            self._refused = None
            self.not_ready_reason = None
            self.metrics.swaps.labels("swapped").inc()
            log.info("serving version %s (%d images) after %.2fs; was %s", version, new.size,
                     time.perf_counter() - start, "nothing" if old is None else old.version)
            return new

    def _load(self, version: str, old: LiveVersion | None) -> LiveVersion:
        loaded = self.store.load(version, verify=True, gpu=self.device.startswith("cuda"),
                                 reuse=None if old is None else old.loaded)
        files = loaded.manifest["files"]
        digest = (files["model.pt"]["sha256"], files["preprocess.json"]["sha256"])
        if old is not None and old.model_digest == digest:  # same model (e.g. after an add): reuse it
            if loaded.searcher.segment is old.searcher.segment:  # an add or delete: only the delta is new, and
                return LiveVersion(loaded, old.embedder, old.score_scale)  # its vectors were checked when written
            new = LiveVersion(loaded, old.embedder)
        else:
            new = LiveVersion(loaded, Embedder.from_dir(loaded.directory, self.device))
        new.validate()
        new.searcher.segment.by_sha  # noqa: B018  the content-hash table, built here rather than in the next upload
        return new

    # ---------------------------------------------------------------------------------- work

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking model work in a worker thread, at most `inference_concurrency` at once."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def add(self, uploads: list[tuple[Image.Image, NewItem]]) -> tuple[list[Added], LiveVersion]:
        """Add images to the index as one new published version, embedded with the current version's model.

        An image whose bytes (NewItem.sha256) the collection already holds is not added again: its entry is that
        image (created False); so is a repeat within the batch. Blocking: call from a thread.
        """
        def change(live: LiveVersion) -> tuple[str | None, list[Added | int]]:
            answers: list[Added | str] = []  # an image already indexed, or the sha256 of one to add
            todo: dict[str, tuple[Image.Image, NewItem]] = {}  # sha256 -> the first upload with those bytes
            for image, item in uploads:
                existing = live.find_sha(item.sha256)
                answers.append(Added(existing, False) if existing is not None else item.sha256)
                if existing is None:
                    todo.setdefault(item.sha256, (image, item))
            if not todo:
                return None, answers
            vectors = live.embedder.embed([image for image, _ in todo.values()])  # M x D
            version, ids = self.store.add(vectors, [item for _, item in todo.values()], base=live.loaded)
            new_id = dict(zip(todo, (int(i) for i in ids), strict=True))
            return version, [a if isinstance(a, Added) else new_id[a] for a in answers]

        version, answers = self._write(change)
        new = self._live if version is None else self.reload(version)
        firsts: set[int] = set()
        out = []
        for a in answers:
            if isinstance(a, Added):
                out.append(a)
            else:  # a repeat of the same bytes within the batch answers like an image already indexed
                out.append(Added(new.item(a), a not in firsts))
                firsts.add(a)
        self._compact_if_large(new)
        return out, new

    def remove(self, image_id: int) -> tuple[ItemMeta, LiveVersion]:
        """Remove an image from the index as a new published version (its path tombstoned). KeyError when it is
        not in the collection; index.EmptyCollectionError when it is the last image. Blocking: call from a thread.
        """
        def change(live: LiveVersion) -> tuple[str, ItemMeta]:
            item = live.item(image_id)
            if item is None:
                raise KeyError(image_id)
            return self.store.remove([image_id], base=live.loaded), item

        version, item = self._write(change)
        new = self.reload(version)
        self._compact_if_large(new)
        return item, new

    def rollback(self, version: str, embed: Embed) -> LiveVersion:
        """Publish `version`'s model and collection again, carrying the adds and deletes made since (the adds
        embedded by `embed` with that version's model), and serve it."""
        with self._add_lock:
            published = self.store.rollback(to=version, embed=embed)
        return self.reload(published)

    def _write(self, change: Callable[[LiveVersion], tuple[str | None, T]]) -> tuple[str | None, T]:
        """Run `change(live)` (which writes a version derived from `live`) on the current version, retrying
        with the new one when another writer published first."""
        with self._add_lock:
            for _ in range(ADD_ATTEMPTS):
                self.check_for_new_version()
                live = self._live
                if live is None:
                    raise VersionRefused(self.not_ready_reason)
                try:
                    return change(live)
                except VersionConflictError:  # another writer published first: redo it on its version
                    if self.store.current_version() == self._refused:
                        raise VersionRefused(f"the current index version {self._refused} was refused: the "
                                             "collection cannot change until a loadable version is published") from None
                    log.info("version moved during an update; retrying on the new current version")
            raise VersionRefused("the index kept changing during the update; try again")

    def _compact_if_large(self, live: LiveVersion) -> None:
        """Start folding the delta into a new segment in the background once it has grown large."""
        if live.delta_size < compact_threshold(live.size):
            return
        if self._compacting is not None and self._compacting.is_alive():
            return
        self._compacting = threading.Thread(target=self._compact, args=(live.version,), name="npid-compaction",
                                            daemon=True)
        self._compacting.start()

    def _compact(self, version: str) -> None:
        try:
            compacted = self.store.compact(version)
        except Exception:  # a failed compaction costs nothing but speed: log it, the next add retries
            log.exception("compaction of %s failed", version)
            return
        if compacted is not None:
            log.info("compacted %s into %s", version, compacted)
            self.check_for_new_version()
