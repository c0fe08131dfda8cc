"""A running job's side of the job record: its lease, its progress, cancel checks, its time limit, its outcome.

Redis may be away for a while (a restart, a failover): every call here retries with backoff for as long as the
lease can still be alive (`lock_ttl_s` after the last successful renewal), so a blip shorter than the lease
costs nothing. Past that the job stops with a clear reason and publishes nothing; its record is written as
failed by this worker when Redis answers again, or by the first reader (service/jobs/store.py), so it never stays
"running". The training thread itself never waits on Redis: progress is written by the lease thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any, TypeVar

from trainer.progress import Progress, TrainingCancelled

from .store import Job, JobStore, JobsUnavailable, LeaseLost
from .vocabulary import Phase

log = logging.getLogger(__name__)

T = TypeVar("T")
CANCEL_CHECK_S = 1.0
FIRST_RETRY_S, MAX_RETRY_S = 0.1, 2.0


class JobTimeLimit(RuntimeError):
    """The job ran past NPID_JOBS_TIME_LIMIT_S."""


def retrying(call: Callable[[], T], until: float) -> T:
    """call(), retried with exponential backoff while Redis is unreachable, until monotonic time `until`."""
    delay = FIRST_RETRY_S
    while True:
        try:
            return call()
        except JobsUnavailable:
            left = until - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(delay, left))
            delay = min(2 * delay, MAX_RETRY_S)


class JobReporter:
    """Turns trainer progress into job records, renews the lease, answers the trainer's `should_stop`.

    As a context manager it renews the lease from a background thread every heartbeat_s (compare-and-extend:
    only while this attempt holds the lock), writing the latest progress with it, so long phases without
    progress reports never look like a dead worker; the thread dies with the process, so a killed worker's
    lease still expires.
    """

    def __init__(self, store: JobStore, job: Job, time_limit_s: float | None = None):
        self.store, self.job = store, job
        self.deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self.lease_ends = time.monotonic() + store.lock_ttl_s  # as this worker knows it: a lower bound
        self.lost: str | None = None  # why the lease is gone, once it is
        self.stop, self.next_check, self.check_every = False, 0.0, CANCEL_CHECK_S
        self._lock = threading.Lock()  # guards self.job between the training thread and the lease thread
        self._wake, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join()

    # --- the lease ------------------------------------------------------------------------------
    def _renew_once(self) -> None:
        asked = time.monotonic()
        with self._lock:
            self.store.renew(self.job)
        self.lease_ends = asked + self.store.lock_ttl_s

    def _keep_alive(self) -> None:
        delay, retry = self.store.heartbeat_s, FIRST_RETRY_S
        while not self._done.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                self._renew_once()
                delay, retry = self.store.heartbeat_s, FIRST_RETRY_S
            except LeaseLost as e:
                self.lost = str(e)
                return
            except JobsUnavailable as e:
                left = self.lease_ends - time.monotonic()
                if left <= 0:
                    self.lost = (f"Redis was unreachable for longer than the job's lease ({self.store.lock_ttl_s:g} s);"
                                 " the job stopped and published nothing")
                    log.error("job %s: %s", self.job.id, self.lost)
                    return
                delay, retry = min(retry, max(left / 2, 0.01)), min(2 * retry, MAX_RETRY_S)
                log.warning("job %s: cannot renew its lease (%s); retrying in %.2f s, %.1f s of lease left",
                            self.job.id, e, delay, left)

    def fence(self) -> None:
        """Renew the lease now, or raise LeaseLost: called right before publishing, so that only the holder of
        the lock publishes, with a whole lease length ahead of it for the atomic publish step."""
        self._raise_if_lost()
        try:
            retrying(self._renew_once, self.lease_ends)
        except JobsUnavailable:
            raise LeaseLost("Redis was unreachable for longer than the job's lease; nothing was published") from None

    def _raise_if_lost(self) -> None:
        if self.lost is not None:
            raise LeaseLost(self.lost)

    # --- what the job body calls ------------------------------------------------------------------
    def phase(self, name: Phase, **extra: Any) -> None:
        with self._lock:
            self.job.progress = {"phase": name, **extra}
        self._wake.set()  # written at once by the lease thread

    def progress(self, p: Progress) -> None:
        with self._lock:
            self.job.progress = {k: v for k, v in asdict(p).items() if v is not None}
        if p.phase != "training":
            self._wake.set()

    def should_stop(self) -> bool:
        """True once a cancel was requested; raises LeaseLost / JobTimeLimit when the job must end anyway."""
        self._raise_if_lost()
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimeLimit("the job ran past its time limit (NPID_JOBS_TIME_LIMIT_S); nothing was published")
        now = time.monotonic()
        if not self.stop and now >= self.next_check:
            try:
                self.stop = self.store.cancel_requested(self.job.id)
                self.check_every = CANCEL_CHECK_S
            except JobsUnavailable:  # asked again later, less often: the lease thread decides when to give up
                self.check_every = min(2 * self.check_every, MAX_RETRY_S * 4)
            self.next_check = now + self.check_every
        return self.stop

    def cancel_requested(self) -> bool:
        """A cancel check that waits out a Redis blip (used right before publishing)."""
        self._raise_if_lost()
        return retrying(lambda: self.store.cancel_requested(self.job.id), self.lease_ends)


def run_job(jobs: JobStore, job: Job, body: Callable[[JobReporter], tuple[str, dict]],
            time_limit_s: float | None = None) -> None:
    """Run a job body under its lease and record how it ended, whatever happened."""
    try:
        with JobReporter(jobs, job, time_limit_s) as reporter:  # the lease is renewed until the body returns
            version, metrics = body(reporter)
        outcome = partial(jobs.succeed, job, version, metrics)
    except TrainingCancelled:
        log.info("job %s cancelled", job.id)
        outcome = partial(jobs.cancelled, job)
    except LeaseLost as e:
        log.error("job %s stopped: %s", job.id, e)
        outcome = partial(jobs.fail, job, f"lease lost: {e}")
    except Exception as e:  # a job must end in a recorded state whatever happened; the log keeps the trace
        log.exception("job %s failed", job.id)
        outcome = partial(jobs.fail, job, f"{type(e).__name__}: {e}")
    _record(job, outcome, jobs.lock_ttl_s)


def _record(job: Job, finish: Callable[[], bool], patience_s: float) -> None:
    """Write the outcome, waiting out a Redis blip; if Redis stays away, the first reader fails the record."""
    try:
        if not retrying(finish, time.monotonic() + patience_s):
            log.warning("job %s: its record was already finished by another party; left as it is", job.id)
    except JobsUnavailable:
        log.error("job %s: could not record its outcome (Redis unreachable); its lease will expire", job.id)
