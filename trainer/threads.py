"""Training threads that keep their speed when the machine gets busy.

torch's intra-op threads meet at the end of every operator. When another process takes one of the cores they
run on, the thread sharing that core gets a fraction of it and every operator waits for that thread: two threads
on two cores, one of them taken, train slower than one thread on the free core (docs/deadline-benchmark.md
measures it).
The tuner times the steps at the current thread count and, every `probe_every_s`, a window at one thread fewer
(or, below the cores it was given, one more), keeping whichever trained more images a second. A probe costs
nothing but a window of real steps at the other count, so the run follows the load as it comes and goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class ThreadTuner:
    """Call `step_done(images)` after each training step (CPU only: a CPU step ends when its work does)."""

    def __init__(self, max_threads: int, probe_every_s: float = 20.0, window_s: float = 1.0, min_steps: int = 3,
                 gain: float = 1.05, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.max_threads = max(1, max_threads)
        self.threads = self.max_threads
        self.probe_every_s, self.window_s, self.min_steps, self.gain = probe_every_s, window_s, min_steps, gain
        self.clock, self.set_threads = clock, set_threads
        self.rate: float | None = None  # images/s at self.threads, from the last window
        self.probing: int | None = None  # the thread count being tried
        self.last_probe = clock()
        self._start, self._steps, self._images = clock(), 0, 0

    def step_done(self, images: int) -> None:
        self._steps += 1
        self._images += images
        now = self.clock()
        if self._steps < self.min_steps or now - self._start < self.window_s:
            return
        rate = self._images / (now - self._start)
        if self.probing is not None:
            self._decide(rate)
        else:
            self.rate = rate
            if now - self.last_probe >= self.probe_every_s and self.max_threads > 1:
                self.probing = self.threads - 1 if self.threads > 1 else self.threads + 1
                self.set_threads(self.probing)
        self._start, self._steps, self._images = self.clock(), 0, 0

    def _decide(self, probe_rate: float) -> None:
        tried, self.probing, self.last_probe = self.probing, None, self.clock()
        if self.rate is None or probe_rate > self.gain * self.rate:
            log.info("training threads: %d -> %d (%.0f -> %.0f images/s)", self.threads, tried, self.rate or 0,
                     probe_rate)
            self.threads, self.rate = tried, probe_rate
        else:
            self.set_threads(self.threads)
