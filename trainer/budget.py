"""A training run's time budget: a wall-clock deadline for the training phase, with an optional epoch cap.

`fraction(epoch)` is how much of the run is done, the larger of the time spent over the budget and the epochs
done over the cap, so the learning-rate schedule (trainer/schedule.py:lr_at_fraction) reaches its end exactly
when the run does, whichever limit comes first; the run stops at the first step boundary where it is 1. Time
spent before a resume counts (`spent_s`, from the checkpoint), so a resumed or extended run continues its
schedule by the time left. Under DDP every rank takes rank 0's fraction, so all stop at the same step with the
same learning rate.

`planned_epochs` turns the rate seen so far into the epochs the budget should buy: an estimate for the progress
bar and the ETA only, never a limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .distributed import Dist, from_rank0


def now() -> float:
    """The budget's clock (tests replace it to run a budget without waiting)."""
    return time.monotonic()


@dataclass
class Budget:
    seconds: float | None  # the training phase's budget; None: epochs only
    cap: int  # epochs (0: no cap; only with a time budget)
    spent_s: float = 0.0  # training time before this process (a resumed run)
    clock: Callable[[], float] | None = None  # default: `now`
    start: float = field(init=False)

    def __post_init__(self) -> None:
        if self.seconds is None and self.cap < 1:
            raise ValueError("a run needs a time budget or an epoch cap")
        self.start = self._now()

    def _now(self) -> float:
        return (self.clock or now)()

    def elapsed(self) -> float:
        return self.spent_s + self._now() - self.start

    def fraction(self, epoch: float, d: Dist | None = None) -> float:
        """The share of the run done at fractional epoch `epoch` (0..1, rank 0's on every rank)."""
        by_time = self.elapsed() / self.seconds if self.seconds else 0.0
        by_epochs = epoch / self.cap if self.cap else 0.0
        done = min(max(by_time, by_epochs), 1.0)
        return from_rank0(done, d) if d is not None else done

    def planned_epochs(self, epoch: float, images_per_s: float, images: int) -> float:
        """Epochs the run should end at: the epochs done, plus what the time left buys at `images_per_s`, capped."""
        if self.seconds is None or images_per_s <= 0:
            return float(self.cap)
        planned = epoch + max(self.seconds - self.elapsed(), 0.0) * images_per_s / max(images, 1)
        return min(planned, self.cap) if self.cap else planned

    def eta_s(self, epoch: float, images_per_s: float, images: int) -> float:
        """Seconds left: by the clock, or sooner when the epoch cap comes first."""
        by_time = max(self.seconds - self.elapsed(), 0.0) if self.seconds else math.inf
        by_epochs = (self.cap - epoch) * images / images_per_s if self.cap and images_per_s > 0 else math.inf
        left = min(by_time, by_epochs)
        return 0.0 if math.isinf(left) else left
