"""The one-watcher lock: a Redis key holding the token of the watcher that applies, with a TTL it renews.

However many watchers are started (an API replica count copied onto the watcher by mistake, a second `npid up`
on the same Redis), one holds `npid:lock:watch` and applies; the others wait and take over within the TTL once it
stops. Renewal is compare-and-extend, release compare-and-delete (Lua), so a watcher never extends or frees a
lock that has passed to another. The index's own optimistic writes (VersionConflictError) are the second guard:
even a watcher that lost the lock mid-write cannot apply a change twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

import redis

log = logging.getLogger(__name__)

KEY = "npid:lock:watch"

_RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('del', KEYS[1])
return 1
"""


def watcher_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WatchLock:
    def __init__(self, redis_url: str, ttl_s: float, name: str | None = None):
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_ms = int(ttl_s * 1000)
        self.token = f"{name or watcher_name()}:{secrets.token_hex(4)}"
        self._valid_until = 0.0  # monotonic time until which the lock is certainly ours
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this watcher holds the lock (True) or `stop` is set (False)."""
        said = None
        while not stop.is_set():
            started = time.monotonic()
            try:
                if self.redis.set(KEY, self.token, nx=True, px=self.ttl_ms):
                    self._valid_until = started + self.ttl_ms / 1000 * 0.9
                    self._start_renewing()
                    log.info("holding the watch lock (%s): this watcher applies the folder's changes", self.token)
                    return True
                holder = self.redis.get(KEY)
                why = f"another watcher holds the watch lock ({(holder or b'?').decode(errors='replace')}): waiting"
            except redis.RedisError as e:
                why = f"cannot reach Redis for the watch lock ({type(e).__name__}): waiting"
            if why != said:
                log.warning("%s", why)
                said = why
            stop.wait(min(self.ttl_ms / 1000 / 3, 5.0))
        return False

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
            self._renewer = None
        self._valid_until = 0.0
        try:
            self.redis.eval(_RELEASE, 1, KEY, self.token)
        except redis.RedisError as e:
            log.warning("could not release the watch lock (it expires by itself): %s", e)

    def _start_renewing(self) -> None:
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="npid-watch-lock", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        every = self.ttl_ms / 1000 / 3
        while not self._stop.wait(every):
            started = time.monotonic()
            try:
                if not self.redis.eval(_RENEW, 1, KEY, self.token, self.ttl_ms):
                    log.error("lost the watch lock to another watcher: stopping to apply")
                    self._valid_until = 0.0
                    return
                self._valid_until = started + self.ttl_ms / 1000 * 0.9
            except redis.RedisError as e:  # held until the TTL says otherwise; renewal is tried again
                log.warning("cannot renew the watch lock: %s", e)
