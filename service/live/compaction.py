"""Compaction: once the adds and deletes of the served version (its delta, index/delta.py) have grown large, a
background thread folds them into a new segment (`ArtifactStore.compact`, O(collection)) and the engine swaps
to the compacted version. Searching a small delta exactly and filtering removed ids costs little; a large one
would slow every query."""

from __future__ import annotations

import logging
import threading

from .engine import Engine
from .version import LiveVersion

log = logging.getLogger(__name__)

COMPACT_MIN_DELTA = 2048  # rows added + ids removed before a compaction is worth its O(collection) rewrite
COMPACT_FRACTION = 0.05  # ... or this fraction of the collection, whichever is larger


def compact_threshold(size: int) -> int:
    """Delta size from which the background compaction runs: searching the delta exactly and filtering
    removed ids stays a small part of a query below it."""
    return max(COMPACT_MIN_DELTA, int(COMPACT_FRACTION * size))


class Compactor:
    """At most one compaction at a time, off the request path."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._thread: threading.Thread | None = None

    def compact_if_large(self, live: LiveVersion) -> None:
        """Start folding the delta into a new segment in the background once it has grown large."""
        if live.delta_size < compact_threshold(live.size):
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._compact, args=(live.version,), name="npid-compaction",
                                        daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float = 60) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _compact(self, version: str) -> None:
        try:
            compacted = self.engine.store.compact(version)
        except Exception:  # a failed compaction costs nothing but speed: log it, the next add retries
            log.exception("compaction of %s failed", version)
            return
        if compacted is not None:
            log.info("compacted %s into %s", version, compacted)
            self.engine.check_for_new_version()
