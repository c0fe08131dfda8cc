"""The watcher's loop: events and rescans notice paths, settling debounces them, the applier publishes them;
progress goes to `<artifacts>/watch.json` for GET /ready (service/live/watching.py).

The loop remembers what it verified: `indexed` (path -> stat of a file whose bytes the index holds) and `passed`
(files looked at and left out: unreadable, or bytes the API already indexed). A rescan walks the folder (stat
only) and notices what differs from the live version: a file not indexed (unless tombstoned or passed as it is),
an indexed path whose file is gone, and an indexed file whose stat changed. On first sight (a fresh start) an
indexed file last modified before it was added to the index is taken as indexed without reading it; any other
is hashed once. A version published by a training, a re-index or a rollback is reconciled at once.
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache

from service.live.engine import Engine
from service.live.version import LiveVersion
from service.live.watching import WatchProgress, utc_now, write_progress
from service.settings import Settings

from .apply import Applier, Outcome
from .events import FolderEvents
from .folder import Stat, is_api_write, is_collection_file, is_hidden, scan
from .settle import Settling

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often events are drained and pending paths looked at
REPORT_EVERY_S = 10.0  # the progress record is rewritten at least this often (GET /ready calls it stale after 60)
MIN_GAP_S = 0.5  # ... and at most this often
UPLOAD_QUIET_S = 5.0  # files the API may be writing settle this long at least: its own add lands first
RETRY_AFTER_S = 5.0  # after a failed apply


@lru_cache(maxsize=4096)
def _added_ns(added: str) -> int:
    """An item's `added` (UTC, whole seconds) as nanoseconds since the epoch; 0 when unreadable."""
    try:
        return calendar.timegm(time.strptime(added, "%Y-%m-%dT%H:%M:%SZ")) * 1_000_000_000
    except (TypeError, ValueError):
        return 0


class Watcher:
    def __init__(self, settings: Settings, engine: Engine, name: str):
        self.settings, self.engine = settings, engine
        self.root = settings.collection_root
        self.upload_subdir = settings.upload_subdir
        artifacts = settings.artifacts_dir.resolve()  # inside the folder: its run folders' pictures are no photos
        inside = artifacts.is_relative_to(self.root)
        self.excluded = artifacts.relative_to(self.root).as_posix() + "/" if inside else None
        self.indexed: dict[str, Stat] = {}
        self.passed: dict[str, Stat] = {}
        self.progress = WatchProgress(watcher=name)
        self.settling = Settling(self.root, settings.watch_debounce_s, max(settings.watch_debounce_s, UPLOAD_QUIET_S),
                                 lambda p: is_api_write(p, self.upload_subdir))
        self.applier = Applier(engine, self.root, self.upload_subdir, settings.watch_batch, self._on_progress)
        self._last_seen: str | None = None  # the live version at the last turn of the loop
        self._before = (0, 0)  # progress counts when the running apply began
        self._shown: tuple = ()
        self._reported = 0.0

    # ---------------------------------------------------------------------------------- the loop

    def run(self, holding: Callable[[], bool], stop: threading.Event) -> None:
        """Watch until `stop` is set or `holding()` turns false (the lock was lost)."""
        events = FolderEvents(self.root)
        events.start()
        next_scan = 0.0
        try:
            while not stop.is_set() and holding():
                self.engine.check_for_new_version()
                live = self.engine.live
                if live is None:  # nothing to add to before the first version
                    self._report("waiting")
                    stop.wait(1.0)
                    continue
                if self._new_collection(live):
                    next_scan = 0.0
                for path in events.drain():
                    self._notice_event(path, live)
                if time.monotonic() >= next_scan:
                    self._scan(live)
                    next_scan = time.monotonic() + self.settings.watch_rescan_s
                ready = self.settling.settled()
                if ready:
                    if not self._apply(ready, holding):
                        stop.wait(RETRY_AFTER_S)
                self._report("watching")
                stop.wait(TICK_S)
        finally:
            events.stop()

    def _new_collection(self, live: LiveVersion) -> bool:
        """Whether CURRENT moved to a collection the folder was not reconciled with: a build (a training, a
        re-index, a carried rollback) or a version older than the last one seen (a rollback as it was)."""
        last, self._last_seen = self._last_seen, live.version
        if last is None or live.version == last:
            return False
        return live.manifest["origin"]["kind"] == "build" or int(live.version[1:]) < int(last[1:])

    def _mine(self, path: str) -> bool:
        return self.excluded is None or not (path + "/").startswith(self.excluded)

    def _notice_event(self, path: str, live: LiveVersion) -> None:
        if is_hidden(path) or not self._mine(path):
            return
        if (self.root / path).is_dir():  # a folder added or moved in: everything in it
            self.settling.notice(p for p in scan(self.root, path) if self._mine(p))
        elif is_collection_file(path):
            self.settling.notice([path])
        else:  # perhaps a folder moved out or deleted: the indexed files that were in it
            prefix = path + "/"
            self.settling.notice(it.path for it in live.searcher.metadata if it.path.startswith(prefix))

    def _scan(self, live: LiveVersion) -> None:
        self._report("scanning", force=True)
        files = {p: st for p, st in scan(self.root).items() if self._mine(p)}
        items, tombstones = live.searcher.metadata, live.loaded.tombstones
        noticed = []
        for path, st in files.items():
            item = items.find_path(path)
            if item is None:
                if path not in tombstones and self.passed.get(path) != st:
                    noticed.append(path)
            elif self.indexed.get(path) != st:
                if path not in self.indexed and item.sha256 is not None and \
                        st.mtime_ns < _added_ns(item.added) + 1_000_000_000:
                    self.indexed[path] = st  # unchanged since it was indexed ("added" has whole seconds)
                else:
                    noticed.append(path)
        noticed += [it.path for it in items if it.path not in files]
        for cache in (self.indexed, self.passed):
            for path in [p for p in cache if p not in files]:
                del cache[path]
        fresh = [p for p in noticed if p not in self.settling]
        self.settling.notice(fresh)
        self.progress.scans += 1
        self.progress.last_scan = utc_now()
        if fresh:
            log.info("rescan: %d changed paths found (%d files in the folder)", len(fresh), len(files))

    def _apply(self, paths: list[str], holding: Callable[[], bool]) -> bool:
        if not holding():
            self.settling.notice(paths)
            return True
        self._before = (self.progress.done, self.progress.skipped)
        self._report("applying", pending=len(self.settling) + len(paths), force=True)
        try:
            out = self.applier.apply(paths, holding)
        except Exception:  # a refused or racing version, a full disk...: log it, look at these paths again later
            log.exception("applying %d changed files failed; trying again", len(paths))
            self.settling.notice(paths)
            return False
        self._remember(out)
        return True

    def _remember(self, out: Outcome) -> None:
        for path in out.absent:
            self.indexed.pop(path, None)
            self.passed.pop(path, None)
        for path, st in out.indexed.items():
            self.indexed[path] = st
            self.passed.pop(path, None)
        for path, st in out.passed.items():
            self.passed[path] = st
            self.indexed.pop(path, None)
        self.settling.notice(out.unsettled)
        self._count(out)

    # ---------------------------------------------------------------------------------- progress

    def _count(self, out: Outcome) -> None:
        done, skipped = self._before
        if out.done and self.progress.done != done + out.done:
            self.progress.last_change = utc_now()
        self.progress.done, self.progress.skipped = done + out.done, skipped + out.skipped

    def _on_progress(self, remaining: int, out: Outcome) -> None:
        self._count(out)
        self._report("applying", pending=len(self.settling) + remaining, force=True)  # once a batch

    def _report(self, state: str, pending: int | None = None, force: bool = False) -> None:
        """Write the progress record when it changed (at most every MIN_GAP_S), when it is due, or when forced."""
        p = self.progress
        pending = len(self.settling) if pending is None else pending
        now = time.monotonic()
        changed = (state, pending, p.done, p.skipped) != self._shown
        if not (force or (changed and now - self._reported >= MIN_GAP_S) or now - self._reported >= REPORT_EVERY_S):
            return
        p.state, p.pending = state, pending
        try:
            write_progress(self.settings.artifacts_dir, p)
        except OSError as e:
            log.warning("cannot write the watcher's progress: %s", e)
        self._shown, self._reported = (state, pending, p.done, p.skipped), now
