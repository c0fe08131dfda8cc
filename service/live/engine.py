"""The hot swap: which version serves now, and the swap to a new one.

`Engine.check_for_new_version()` reads the store's CURRENT pointer (one small file: cheap enough to poll every
couple of seconds, which a background thread of the API process does); when it names another version,
`reload()` loads and validates it beside the old one, then swaps the reference in one assignment. Requests take
`engine.live` once and finish on it, so in-flight work completes on the old version while new requests get the
new one; the old version is freed when its last request ends. A version that fails to load or validate is
refused and logged, the old one keeps serving, and it is not retried until the pointer moves again.

Versions are published by other processes (the worker's jobs) and by this one (service/live/writes.py: adds,
deletes, rollbacks, which call `reload` right after publishing); the poller finds the former within
`poll_interval_s`. A version made by an add or a delete shares its base segment with the live one
(index/delta.py): it is loaded in O(delta), reusing the live segment and model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import anyio

from index import ArtifactStore, IndexStoreError
from trainer.embed import Embedder

from .version import LiveVersion, VersionRefused

log = logging.getLogger(__name__)

T = TypeVar("T")
SwapOutcome = Literal["swapped", "refused"]


class Engine:
    """Holds the live version and swaps in new ones. Thread-safe; blocking methods are meant for threads (the
    poller, request worker threads), never for the event loop."""

    def __init__(self, artifacts_dir: str | Path, device: str = "cpu", poll_interval_s: float = 2.0,
                 inference_concurrency: int = 1, on_swap: Callable[[SwapOutcome], None] = lambda outcome: None):
        """on_swap: told the outcome of every swap tried (the API counts them in its metrics)."""
        self.store = ArtifactStore(artifacts_dir)
        self.device = device
        self.poll_interval_s = poll_interval_s
        self.on_swap = on_swap
        self.limiter = anyio.CapacityLimiter(inference_concurrency)  # model calls at once
        self.not_ready_reason: str | None = f"no index version has been published in {artifacts_dir}"
        self._live: LiveVersion | None = None
        self._refused: str | None = None  # last version refused: not retried until CURRENT moves
        self._reload_lock = threading.Lock()  # one load and swap at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def live(self) -> LiveVersion | None:
        """The version serving now (None before the first load). Take it once per request."""
        return self._live

    @property
    def refused(self) -> str | None:
        """The last version refused, until CURRENT moves on."""
        return self._refused

    def state(self) -> tuple[str | None, int]:
        """(version, images) serving now, for the metrics."""
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
                self.on_swap("refused")
                serving = "nothing" if old is None else old.version
                log.error("refused version %s (still serving %s): %s: %s", version, serving,
                          type(e).__name__, e)
                if old is None:
                    self.not_ready_reason = f"index version {version} could not be loaded: {e}"
                raise VersionRefused(f"version {version} refused: {e}") from e
            self._live = new  # the swap: one reference assignment, model and index together
            self._refused = None
            self.not_ready_reason = None
            self.on_swap("swapped")
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

    # ---------------------------------------------------------------------------------- model work

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking model work in a worker thread, at most `inference_concurrency` at once."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
