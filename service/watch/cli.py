"""`npid watch`: the folder watcher process (settings: NPID_* variables, .env). One per deployment applies: the
others wait on the watch lock. With NPID_WATCH=0 it stays idle, so that a supervisor does not restart it."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

log = logging.getLogger(__name__)


def register(sub) -> None:
    w = sub.add_parser("watch", help="index images added, replaced, moved or removed in the folder (settings: NPID_*)",
                       description="Watch NPID_COLLECTION_ROOT and apply its changes to the live index with the live "
                                   "model, without training. One watcher applies; others wait for its Redis lock.")
    w.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    from ..settings import load_settings

    settings = load_settings()  # a SettingsError: service/cli.py says it
    logging.getLogger("service").setLevel(settings.log_level)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # not a line per event
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    if not settings.watch:
        log.warning("watching is off (NPID_WATCH=0): nothing is applied; files are indexed by re-index jobs")
        stop.wait()
        return 0
    return watch(settings, stop)


def watch(settings, stop: threading.Event) -> int:
    import torch

    from ..live.engine import Engine
    from .lock import WatchLock, watcher_name
    from .watcher import Watcher

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)  # the API's cores stay the API's
    lock = WatchLock(settings.redis_url, settings.watch_lock_ttl_s)
    engine = Engine(settings.artifacts_dir, settings.device, settings.poll_interval_s)
    watcher = Watcher(settings, engine, watcher_name())
    log.info("watching %s (rescan every %g s, debounce %g s)", settings.collection_root, settings.watch_rescan_s,
             settings.watch_debounce_s)
    while not stop.is_set():
        if not lock.acquire(stop):
            break
        try:
            watcher.run(lock.held, stop)
        finally:
            lock.release()
        if not stop.is_set():
            log.warning("no longer holding the watch lock: waiting for it again")
    return 0
