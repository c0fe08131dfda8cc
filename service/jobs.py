"""Job records and the single-flight lock, kept in Redis (Celery reports PENDING for any unknown id, so the
API keeps its own records).

Keys (prefix `npid:`):
    job:<id>      JSON record (see `Job`), kept for `RECORD_TTL_S`
    jobs          sorted set of job ids by creation time (GET /jobs)
    lock:jobs     id of the queued or running job; SET NX with an expiry that the running job keeps extending
    cancel:<id>   set by DELETE /jobs/<id>; the job stops at its next step and publishes nothing

Worker-loss policy (documented in the README): a running job writes a heartbeat at least every
`heartbeat_s` seconds and extends the lock to `lock_ttl_s`. If its worker dies (SIGKILL, OOM, power), the
lock expires by itself after `lock_ttl_s`, and the first read of the job after that marks it `failed` with
the reason "worker lost". Tasks are acknowledged on receipt (acks_late off), so a killed job is not re-run
behind the user's back: POST /jobs/train again to retrain. The published version is never touched.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Kind = Literal["train", "index"]
FINISHED = ("succeeded", "failed", "cancelled")
RECORD_TTL_S = 7 * 24 * 3600
QUEUED_LOCK_TTL_S = 24 * 3600  # a queued job holds the lock until a worker takes it (or it is cancelled)
PREFIX = "npid:"


class JobsUnavailable(RuntimeError):
    """Redis cannot be reached; the message says where it was looked for."""


class JobConflict(RuntimeError):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} is queued or running")
        self.job_id = job_id


@dataclass
class Job:
    id: str
    kind: Kind
    state: State = "queued"
    params: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


class JobStore:
    """Every Redis access of the jobs API and the worker. Fails fast (about a second) when Redis is down."""

    def __init__(self, redis_url: str, lock_ttl_s: float = 60.0, heartbeat_s: float = 5.0):
        if heartbeat_s >= lock_ttl_s:
            raise ValueError("heartbeat_s must be shorter than lock_ttl_s")
        self.url = redis_url
        self.lock_ttl_s, self.heartbeat_s = lock_ttl_s, heartbeat_s
        self.r = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=3,
                                      decode_responses=True, health_check_interval=10)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise JobsUnavailable(f"the job queue is unavailable: cannot reach Redis ({e})") from e

    def _save(self, job: Job) -> None:
        self._call(self.r.set, PREFIX + "job:" + job.id, json.dumps(asdict(job)), ex=RECORD_TTL_S)

    def ping(self) -> None:
        self._call(self.r.ping)

    # --- API side -------------------------------------------------------------------------------
    def create(self, kind: Kind, params: dict[str, Any]) -> Job:
        """A new queued job holding the lock; JobConflict when another job holds it."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, params=params)
        if not self._call(self.r.set, PREFIX + "lock:jobs", job.id, nx=True, ex=QUEUED_LOCK_TTL_S):
            holder = self._call(self.r.get, PREFIX + "lock:jobs")
            if holder is None:  # expired between the two calls: try once more
                return self.create(kind, params)
            self.get(holder)  # a dead holder is reaped (and the lock is released) on read
            raise JobConflict(holder)
        self._save(job)
        self._call(self.r.zadd, PREFIX + "jobs", {job.id: job.created})
        return job

    def discard(self, job: Job, error: str) -> None:
        """The job could not be queued (broker down): record it failed and free the lock."""
        self._finish(job, "failed", error=error)

    def get(self, job_id: str) -> Job | None:
        text = self._call(self.r.get, PREFIX + "job:" + job_id)
        if text is None:
            return None
        job = Job.from_json(text)
        if job.state == "running" and time.time() - (job.heartbeat or job.started or 0) > self.lock_ttl_s:
            self._finish(job, "failed", error=f"worker lost: no heartbeat for {self.lock_ttl_s:.0f} s (the worker "
                                              "was killed or crashed); nothing was published")
        return job

    def recent(self, limit: int = 20) -> list[Job]:
        ids = self._call(self.r.zrevrange, PREFIX + "jobs", 0, limit - 1)
        return [job for job in (self.get(i) for i in ids) if job is not None]

    def cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled at once. Running: flagged; the worker stops at its next step."""
        job = self.get(job_id)
        if job is None or job.state in FINISHED:
            return job
        self._call(self.r.set, PREFIX + "cancel:" + job_id, "1", ex=RECORD_TTL_S)
        if job.state == "queued":
            self._finish(job, "cancelled", error="cancelled before it started")
        return job

    # --- worker side ----------------------------------------------------------------------------
    def start(self, job_id: str) -> Job | None:
        """Mark running and hold the lock on a short lease; None when the job was cancelled or is unknown."""
        job = self.get(job_id)
        if job is None or job.state != "queued" or self.cancel_requested(job_id):
            return None
        job.state, job.started, job.heartbeat = "running", time.time(), time.time()
        self._save(job)
        self._call(self.r.set, PREFIX + "lock:jobs", job.id, px=int(self.lock_ttl_s * 1000))
        return job

    def beat(self, job: Job, progress: dict[str, Any] | None = None, force: bool = False) -> None:
        """Record progress; at most once per heartbeat_s unless forced. Extends the lock lease."""
        if progress is not None:
            job.progress = progress
        now = time.time()
        if not force and job.heartbeat and now - job.heartbeat < self.heartbeat_s:
            return
        job.heartbeat = now
        self._save(job)
        self._call(self.r.set, PREFIX + "lock:jobs", job.id, px=int(self.lock_ttl_s * 1000))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._call(self.r.exists, PREFIX + "cancel:" + job_id))

    def succeed(self, job: Job, version: str | None, metrics: dict[str, Any]) -> None:
        job.version, job.metrics = version, metrics
        self._finish(job, "succeeded")

    def fail(self, job: Job, error: str) -> None:
        self._finish(job, "failed", error=error)

    def cancelled(self, job: Job) -> None:
        self._finish(job, "cancelled", error="cancelled while running; nothing was published")

    def _finish(self, job: Job, state: State, error: str | None = None) -> None:
        job.state, job.finished = state, time.time()
        if error is not None:
            job.error = error
        self._save(job)
        # release the lock only if this job still holds it
        self._call(self.r.eval, "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                                "end return 0", 1, PREFIX + "lock:jobs", job.id)
