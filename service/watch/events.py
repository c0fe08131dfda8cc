"""inotify (or the platform's own events) through watchfiles, on a thread: the paths under the root that changed,
collected until the watcher drains them. Events are only a hint of where to look: what changed is decided by
stat and content. Where events do not arrive (network filesystems, some Docker volume drivers) or the watch
cannot be set up (too many folders for fs.inotify.max_user_watches), the watcher's periodic rescan finds the
changes instead.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

GROUP_MS = 300  # watchfiles yields the changes of up to this long at once


class FolderEvents:
    def __init__(self, root: Path):
        self.root = root
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="npid-watch-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def drain(self) -> set[str]:
        """The relative paths (files or folders) that changed since the last call."""
        with self._lock:
            paths, self._paths = self._paths, set()
        return paths

    def _run(self) -> None:
        from watchfiles import watch

        try:
            for changes in watch(self.root, watch_filter=None, debounce=GROUP_MS, step=50, stop_event=self._stop,
                                 rust_timeout=1000, raise_interrupt=False, ignore_permission_denied=True):
                found = {os.path.relpath(path, self.root).replace(os.sep, "/") for _, path in changes}
                with self._lock:
                    self._paths |= {p for p in found if p != "." and not p.startswith("../")}
        except Exception as e:  # no events (e.g. the inotify watch limit): the periodic rescan remains
            log.warning("no file events from %s (%s: %s): changes are found by the periodic rescan only",
                        self.root, type(e).__name__, e)
