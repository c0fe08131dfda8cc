"""Job records, the single-flight lock with its fenced lease, and worker presence, kept in Redis (Celery reports
PENDING for any unknown id, so the API keeps its own records).

Keys (prefix `npid:`):
    job:<id>      JSON record (see `Job`), kept for `RECORD_TTL_S`
    jobs          sorted set of job ids by creation time (GET /jobs), trimmed to the newest `history` on create
    lock:jobs     "<id>:queued" while a job waits for a worker, "<id>:<token>" while an attempt of it runs
    cancel:<id>   set by POST /jobs/<id>/cancel; the job stops at its next step and publishes nothing
    workers       sorted set: worker name -> the time its presence expires (renewed every heartbeat)

Every write that depends on who holds the lock is one Lua script, so it is atomic:
    create    the lock (NX) and the record together, or neither: no lock without a record, no 24-hour wedge
    start     the queued lock becomes the running attempt's token, the record says running
    renew     compare-and-extend: the lease and the record move only if the lock still holds this token
    finish    the record is written and the lock freed only by its holder (or, once the lock is gone, by the
              attempt the record still names): a job that lost its lease never touches another job's lock

Worker-loss policy (README): a running attempt renews its lease at least every `heartbeat_s` and the lease
lasts `lock_ttl_s`. When the worker dies (SIGKILL, OOM, power) or is cut off from Redis for longer than the
lease, the lock expires by itself and the first read of the job marks it `failed`. A queued job is marked
failed with "no worker" once it has waited a lease length with no worker present. Tasks are acknowledged on
receipt, so nothing is re-run behind the user's back: POST /jobs/<id>/resume continues a failed training
job from its last checkpoint. The published version is never touched.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .vocabulary import FINISHED, JobKind, JobState

RECORD_TTL_S = 7 * 24 * 3600
QUEUED_LOCK_TTL_S = 24 * 3600  # a queued job with no worker is failed long before this (see `get`)
PREFIX = "npid:"
LOCK = PREFIX + "lock:jobs"
HISTORY = PREFIX + "jobs"
WORKERS = PREFIX + "workers"
QUEUED = "queued"  # the token of a lock held by a job that waits for a worker

NO_WORKER = ("no worker is running: start one (`npid worker`, or the worker service of docker compose) and "
             "post the job again")

_CREATE = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[5]) then return redis.call('get', KEYS[1]) end
redis.call('set', ARGV[7] .. 'job:' .. ARGV[2], ARGV[3], 'EX', ARGV[6])
redis.call('zadd', KEYS[2], ARGV[4], ARGV[2])
local keep = tonumber(ARGV[8])
for _, id in ipairs(redis.call('zrange', KEYS[2], 0, -keep - 1)) do
  redis.call('del', ARGV[7] .. 'job:' .. id, ARGV[7] .. 'cancel:' .. id)
end
redis.call('zremrangebyrank', KEYS[2], 0, -keep - 1)
return false
"""

_REQUEUE = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('get', KEYS[1]) end
redis.call('set', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('del', KEYS[3])
return false
"""

_START = """
if redis.call('get', KEYS[1]) ~= ARGV[1] or redis.call('exists', KEYS[3]) == 1 then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('set', KEYS[2], ARGV[4], 'EX', ARGV[5])
return 1
"""

_RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
redis.call('set', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""

_FINISH = """
local holds = redis.call('get', KEYS[1]) == ARGV[1]
if not holds then
  local text = redis.call('get', KEYS[2])
  if not text then return 0 end
  local rec = cjson.decode(text)
  if rec.state ~= ARGV[2] or rec.lease ~= ARGV[3] then return 0 end
end
redis.call('set', KEYS[2], ARGV[4], 'EX', ARGV[5])
if holds then redis.call('del', KEYS[1]) end
return 1
"""


class JobsUnavailable(RuntimeError):
    """Redis cannot be reached (the message names no address: it is shown to clients)."""


class NoWorker(JobsUnavailable):
    def __init__(self):
        super().__init__(NO_WORKER)


class JobConflict(RuntimeError):
    def __init__(self, job_id: str, reason: str | None = None):
        super().__init__(reason or f"a job is already queued or running: {job_id}")
        self.job_id = job_id


class LeaseLost(RuntimeError):
    """This attempt no longer holds the job lock: it must stop and publish nothing."""


@dataclass
class Job:
    id: str
    kind: JobKind
    state: JobState = "queued"
    params: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    queued_at: float = field(default_factory=time.time)  # when it last entered the queue (created or resumed)
    attempt: int = 0  # attempts started; > 1 after a resume
    resume: bool = False  # the next attempt continues from the run folder's checkpoint
    lease: str = ""  # token of the running attempt (never shown by the API); "" while queued

    @classmethod
    def from_json(cls, text: str) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def lock_value(self) -> str:
        return f"{self.id}:{self.lease or QUEUED}"


def holder_of(lock_value: str) -> str:
    return lock_value.split(":", 1)[0]


class JobStore:
    """Every Redis access of the jobs API and the worker. Each call fails fast (about a second) when Redis is
    down, raising JobsUnavailable; the worker side retries (service/jobs/reporter.py)."""

    def __init__(self, redis_url: str, lock_ttl_s: float = 60.0, heartbeat_s: float = 5.0, history: int = 100):
        if heartbeat_s >= lock_ttl_s:
            raise ValueError("heartbeat_s must be shorter than lock_ttl_s")
        self.lock_ttl_s, self.heartbeat_s, self.history = lock_ttl_s, heartbeat_s, history
        self.r = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=3,
                                      decode_responses=True, health_check_interval=10)
        self._create, self._requeue = self.r.register_script(_CREATE), self.r.register_script(_REQUEUE)
        self._start, self._renew = self.r.register_script(_START), self.r.register_script(_RENEW)
        self._finish_script = self.r.register_script(_FINISH)

    @property
    def lease_ms(self) -> int:
        return int(self.lock_ttl_s * 1000)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
            raise JobsUnavailable(f"the job queue is unavailable: cannot reach Redis ({type(e).__name__})") from e

    def ping(self) -> None:
        self._call(self.r.ping)

    # --- worker presence ------------------------------------------------------------------------
    def worker_present(self, name: str) -> None:
        """Say that worker `name` is alive for one lease length."""
        self._call(self.r.zadd, WORKERS, {name: time.time() + self.lock_ttl_s})

    def worker_gone(self, name: str) -> None:
        self._call(self.r.zrem, WORKERS, name)

    def workers_alive(self) -> int:
        now = time.time()
        self._call(self.r.zremrangebyscore, WORKERS, "-inf", now)
        return int(self._call(self.r.zcount, WORKERS, now, "+inf"))

    # --- API side -------------------------------------------------------------------------------
    def create(self, kind: JobKind, params: dict[str, Any]) -> Job:
        """A new queued job holding the lock, written in one step; JobConflict when another job holds it."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, params=params)
        holder = self._call(self._create, keys=[LOCK, HISTORY],
                            args=[job.lock_value, job.id, job.to_json(), job.created, QUEUED_LOCK_TTL_S * 1000,
                                  RECORD_TTL_S, PREFIX, self.history])
        if holder is not None:
            self._reap_holder(holder)
            raise JobConflict(holder_of(holder))
        return job

    def _reap_holder(self, lock_value: str) -> None:
        """Read the lock's job, so that a dead holder is failed (and the lock freed) for the next try."""
        self.get(holder_of(lock_value))

    def resume(self, job_id: str) -> Job:
        """Queue a failed training job again, to continue from its checkpoint. JobConflict when it cannot."""
        job = self.get(job_id)
        if job is None:
            raise LookupError(job_id)
        if job.kind != "train" or job.state != "failed":
            raise JobConflict(job_id, f"only a failed training job can be resumed; job {job_id} is a "
                                      f"{job.state} {job.kind} job")
        job.state, job.finished, job.error, job.progress, job.lease = "queued", None, None, {}, ""
        job.resume, job.queued_at = True, time.time()
        holder = self._call(self._requeue, keys=[LOCK, PREFIX + "job:" + job.id, PREFIX + "cancel:" + job.id],
                            args=[job.lock_value, QUEUED_LOCK_TTL_S * 1000, job.to_json(), RECORD_TTL_S])
        if holder is not None:
            self._reap_holder(holder)
            raise JobConflict(holder_of(holder))
        return job

    def discard(self, job: Job, error: str) -> None:
        """The job could not be queued (broker down): record it failed and free the lock."""
        self._finish(job, "failed", error=error)

    def get(self, job_id: str) -> Job | None:
        """The record; a running job whose lease is gone, or a job queued with no worker, is failed first."""
        text = self._call(self.r.get, PREFIX + "job:" + job_id)
        if text is None:
            return None
        job = Job.from_json(text)
        if job.state == "running" and self._call(self.r.get, LOCK) != job.lock_value:
            self._finish(job, "failed", owner="", error=(
                f"worker lost: its lease ran out {self.lock_ttl_s:.0f} s after the last renewal (the worker was "
                "killed, crashed, or could not reach Redis); nothing was published"))
        elif job.state == "queued" and time.time() - job.queued_at > self.lock_ttl_s and not self.workers_alive():
            self._finish(job, "failed", error=NO_WORKER)
        return job

    def recent(self, limit: int = 20) -> list[Job]:
        ids = self._call(self.r.zrevrange, HISTORY, 0, limit - 1)
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
        """Take the queued job's lock with a fresh token on a short lease and mark it running, in one step.
        None when the job is unknown, cancelled, failed meanwhile, or not this queue entry's to run."""
        text = self._call(self.r.get, PREFIX + "job:" + job_id)
        if text is None:
            return None
        job = Job.from_json(text)
        if job.state != "queued":
            return None
        queued_value = job.lock_value
        job.state, job.started, job.heartbeat = "running", time.time(), time.time()
        job.lease, job.attempt = secrets.token_hex(8), job.attempt + 1
        started = self._call(self._start, keys=[LOCK, PREFIX + "job:" + job.id, PREFIX + "cancel:" + job.id],
                             args=[queued_value, job.lock_value, self.lease_ms, job.to_json(), RECORD_TTL_S])
        return job if started else None

    def renew(self, job: Job) -> None:
        """Compare-and-extend: extend the lease and write the record (progress, heartbeat) only while this
        attempt holds the lock. LeaseLost otherwise; JobsUnavailable when Redis cannot be reached."""
        job.heartbeat = time.time()
        held = self._call(self._renew, keys=[LOCK, PREFIX + "job:" + job.id],
                          args=[job.lock_value, self.lease_ms, job.to_json(), RECORD_TTL_S])
        if not held:
            raise LeaseLost(f"job {job.id} lost its lease (another job or a reaper took over)")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._call(self.r.exists, PREFIX + "cancel:" + job_id))

    def succeed(self, job: Job, version: str | None, metrics: dict[str, Any]) -> bool:
        job.version, job.metrics = version, metrics
        return self._finish(job, "succeeded")

    def fail(self, job: Job, error: str) -> bool:
        return self._finish(job, "failed", error=error)

    def cancelled(self, job: Job) -> bool:
        return self._finish(job, "cancelled", error="cancelled while running; nothing was published")

    def _finish(self, job: Job, state: JobState, error: str | None = None, owner: str | None = None) -> bool:
        """Write the final record, freeing the lock if this job holds it. Written only by the lock's holder, or,
        once the lock is gone, while the record still shows this job queued or running in the attempt it was
        read in. False when someone else got there first: the record is left as they wrote it, `job` unchanged."""
        expected_state = job.state if job.state not in FINISHED else "-"  # a finished record is never rewritten
        final = dataclasses.replace(job, state=state, finished=time.time(), error=error or job.error)
        written = bool(self._call(self._finish_script, keys=[LOCK, PREFIX + "job:" + job.id],
                                  args=[job.lock_value if owner is None else owner, expected_state, job.lease,
                                        final.to_json(), RECORD_TTL_S]))
        if written:
            job.state, job.finished, job.error = final.state, final.finished, final.error
        return written
