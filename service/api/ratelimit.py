"""Per-client token buckets: `per_minute` sustained, `burst` at once. In memory, one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 10_000  # buckets kept before idle (full) ones are dropped


@dataclass
class _Bucket:
    tokens: float
    stamp: float  # clock time of the last refill


class RateLimiter:
    """`wait(client)` takes one token and returns 0.0, or returns the seconds until one is available.

    Used from the event loop only (async dependencies), so it needs no lock.
    """

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 0 or burst < 1:
            raise ValueError(f"rate limit needs per_minute >= 0 and burst >= 1 (got {per_minute}, {burst})")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second; 0 = unlimited
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait(self, client: str) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                self._prune(now)
            bucket = self._buckets[client] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Drop clients whose bucket has refilled: forgetting them changes nothing."""
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < full_after}
