"""Debouncing: a noticed path is handed on only once it has held still.

A file is read when its size and mtime have stayed the same for `quiet_s` (a copy still running changes them
at every write, so a file is never read half-written; one whose writer stalls longer than that is read, found
unreadable or different, and read again once it changes). Files the API may be writing (`is_slow`: uploads) wait
`slow_quiet_s`, long enough for the API's own add to land. A removed path settles by staying absent for
`slow_quiet_s + quiet_s`, later than any file that appeared with it: the other half of a rename or move is applied
first and takes the id by content (plan.py), so the removal finds nothing left to remove.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .folder import Stat, stat_of

_UNSEEN = Stat(-1, -1)


class Settling:
    def __init__(self, root: Path, quiet_s: float, slow_quiet_s: float, is_slow: Callable[[str], bool],
                 clock: Callable[[], float] = time.monotonic):
        self.root, self.quiet_s, self.slow_quiet_s = root, quiet_s, slow_quiet_s
        self.is_slow, self.clock = is_slow, clock
        self._paths: dict[str, tuple[Stat | None, float]] = {}  # path -> (stat last seen, when it last changed)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def notice(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._paths.setdefault(path, (_UNSEEN, self.clock()))

    def settled(self) -> list[str]:
        """The paths that held still long enough (sorted), no longer pending."""
        now = self.clock()
        ready = []
        for path, (seen, since) in list(self._paths.items()):
            st = stat_of(self.root, path)
            if st != seen:
                self._paths[path] = (st, now)
            elif now - since >= self._quiet(path, st):
                ready.append(path)
        for path in ready:
            del self._paths[path]
        return sorted(ready)

    def _quiet(self, path: str, st: Stat | None) -> float:
        if st is None:
            return self.slow_quiet_s + self.quiet_s
        return self.slow_quiet_s if self.is_slow(path) else self.quiet_s
