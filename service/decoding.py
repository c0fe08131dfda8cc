"""Bounded image decoding: every decode the API does (uploads for /search and POST /images, thumbnails) runs
in one pool of `NPID_DECODE_THREADS` threads, and all decodes at once hold at most `NPID_DECODE_PIXEL_BUDGET`
pixels (a decode larger than the budget runs alone). Memory is then bounded by the budget, not by the number
of concurrent uploads, and the event loop (and /health) never waits on a decoder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio

T = TypeVar("T")


class PixelBudget:
    """A weighted semaphore counted in pixels; used from decoder threads."""

    def __init__(self, pixels: int):
        if pixels < 1:
            raise ValueError("the pixel budget must be at least 1")
        self.total = self.free = pixels
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(pixels, 1), self.total)  # larger than the budget: waits for all of it, runs alone
        with self._cond:
            self._cond.wait_for(lambda: self.free >= need)
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


class DecodePool:
    """`await pool.run(fn, *args)`: fn(budget, *args) in one of `threads` decoder threads."""

    def __init__(self, threads: int, pixel_budget: int):
        self.limiter = anyio.CapacityLimiter(threads)
        self.budget = PixelBudget(pixel_budget)

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await anyio.to_thread.run_sync(fn, self.budget, *args, limiter=self.limiter)
