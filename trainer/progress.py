"""What a caller sees of a long run, and how it stops one: the phases, the `Progress` reports, and `Tick`s.

A Tick is what the long loops outside the training steps call every batch or image: decoding a collection into
the image cache, filling the memory bank, embedding the collection. It reports how far the phase is (at most
every `REPORT_S`, so a job's record is not rewritten per image) and raises TrainingCancelled once the caller
asked to stop, so that a run can be cancelled in every phase, not only between training steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TrainPhase = Literal["loading", "training", "embedding", "exporting"]  # in this order (service/jobs/vocabulary.py)
Tick = Callable[[int, int], None]  # (items done, items in all); raises TrainingCancelled when asked to stop
REPORT_S = 0.5  # seconds between two reports of one phase's items


class TrainingCancelled(RuntimeError):
    """`should_stop()` returned True; the state was checkpointed, nothing was exported."""


@dataclass
class Progress:
    """What a caller (CLI, background job) sees while training runs."""

    phase: str  # a TrainPhase; the service's jobs report their own phases too (service/jobs/vocabulary.py)
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    knn_top1: float | None = None
    epoch_done: bool = False  # True on the one report at the end of each epoch (loss: the epoch's mean)
    done: int | None = None  # items of the phase done (loading: images decoded; embedding: images embedded)
    total: int | None = None  # ... of this many


def ticker(phase: str, report: Callable[[Progress], None], should_stop: Callable[[], bool] | None,
           epochs: int = 0, clock: Callable[[], float] = time.monotonic) -> Tick:
    """A Tick for `phase`: a Progress(phase, done, total) report now and then (and on the last item), a cancel
    check every call."""
    last = [-REPORT_S]

    def tick(done: int, total: int) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"cancelled while {phase} ({done} of {total})")
        now = clock()
        if now - last[0] >= REPORT_S or done == total:
            last[0] = now
            report(Progress(phase, epochs=epochs, done=done, total=total))

    return tick
