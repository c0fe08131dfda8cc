"""The folder watcher's progress, as `GET /ready` shows it: one small JSON file, `<artifacts>/watch.json`, written
whole (durable.atomic_write) by the one watcher that holds the watch lock (service/watch/) and read by any API
replica. A file, not Redis: the API's readiness never waits on Redis, and every replica mounts the artifacts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from durable import atomic_write

log = logging.getLogger(__name__)

PROGRESS_FILE = "watch.json"
STALE_AFTER_S = 60.0  # a record not rewritten for this long belongs to a watcher that stopped


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class WatchProgress:
    state: str = "starting"  # starting | waiting (no version yet) | scanning | applying | watching
    pending: int = 0  # files noticed and not applied yet: settling, or waiting to be embedded
    done: int = 0  # files applied since the watcher started: added, replaced, moved or removed
    skipped: int = 0  # unreadable files left out (each counted once, until its size or mtime changes)
    scans: int = 0  # full rescans of the folder finished
    last_change: str | None = None  # when the watcher last published a version (UTC, ISO 8601)
    last_scan: str | None = None  # when the last full rescan finished
    watcher: str = ""  # host:pid of the watcher writing this
    updated: str = field(default_factory=utc_now)
    updated_at: float = field(default_factory=time.time)  # seconds since the epoch, for `stale`

    @property
    def stale(self) -> bool:
        return time.time() - self.updated_at > STALE_AFTER_S


def write_progress(artifacts_dir: Path, progress: WatchProgress) -> None:
    progress.updated, progress.updated_at = utc_now(), time.time()
    atomic_write(Path(artifacts_dir) / PROGRESS_FILE, json.dumps(asdict(progress)).encode())


def read_progress(artifacts_dir: Path) -> WatchProgress | None:
    """The last record written, or None when no watcher has written one (or it cannot be read)."""
    try:
        data = json.loads((Path(artifacts_dir) / PROGRESS_FILE).read_text())
        return WatchProgress(**{k: v for k, v in data.items() if k in WatchProgress.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.warning("cannot read the watcher's progress: %s", e)
        return None
