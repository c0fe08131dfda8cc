"""Bounded image decoding: every decode the API does (uploads for /search and POST /images, thumbnails) runs
in one pool of `NPID_DECODE_THREADS` threads, and all decodes at once hold at most `NPID_DECODE_PIXEL_BUDGET`
pixels (a decode larger than the budget runs alone). Memory is then bounded by the budget, not by the number
of concurrent uploads, and the event loop (and /health) never waits on a decoder.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
from PIL import Image

log = logging.getLogger(__name__)

T = TypeVar("T")
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def return_large_buffers_to_the_os() -> bool:
    """Make glibc serve allocations of 4 MiB and more (decoded images) with mmap, so that freeing them returns
    the memory at once. Without it glibc raises its threshold after the first large free (up to 32 MiB), and
    the buffers of finished decodes stay in the decoder threads' heaps: measured, about 300 MiB more resident
    after a few 40-MP decodes (docs/decode-benchmark.md). False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        log.info("not glibc: decoded image buffers are returned as the C library sees fit")
        return False


def shrink(image: Image.Image, side: int) -> Image.Image:
    """An image whose shorter side is at least 2 x `side`, box-reduced by an integer factor when it is much
    larger: what leaves the decoder pool is small, whatever was uploaded. The model's own resize (antialiased)
    then does the last step, as it does for a JPEG decoded in draft mode."""
    factor = min(image.size) // (2 * side)
    return image.reduce(factor) if factor >= 2 else image


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
