"""The Celery worker: `npid worker` (or `celery -A service.jobs.worker worker -Q training -c 1`).

Settings come from the same NPID_* variables as the API. The task bodies live in service/jobs/pipeline.py.
While it runs, the worker says so in Redis every heartbeat (service/jobs/store.py: worker presence), so the API can
refuse jobs, or fail queued ones, when no worker is there to run them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

from ..settings import load_settings
from .pipeline import run_index_job, run_train_job
from .queue import INDEX_TASK, QUEUE, TRAIN_TASK, make_celery
from .runs import clean_runs, runs_to_keep
from .store import JobStore, JobsUnavailable

log = logging.getLogger(__name__)

settings = load_settings()
app = make_celery(settings.redis_url, settings.jobs_time_limit_s)
NAME = f"{socket.gethostname()}:{os.getpid()}"
_leaving = threading.Event()


def _job_store() -> JobStore:
    return JobStore(settings.redis_url, settings.jobs_lock_ttl_s, settings.jobs_heartbeat_s, settings.jobs_history)


def _announce_presence() -> None:
    jobs = _job_store()
    while True:
        try:
            jobs.worker_present(NAME)
        except JobsUnavailable as e:  # Redis away for a moment: the next beat retries
            log.warning("cannot announce this worker: %s", e)
        if _leaving.wait(jobs.heartbeat_s):
            return


@signals.worker_ready.connect
def _start_presence(**_) -> None:
    threading.Thread(target=_announce_presence, name="npid-worker-presence", daemon=True).start()


@signals.worker_shutdown.connect
def _end_presence(**_) -> None:
    _leaving.set()
    try:
        _job_store().worker_gone(NAME)
    except JobsUnavailable as e:  # its presence expires by itself
        log.info("could not withdraw this worker's presence (it expires by itself): %s", e)


def _run(job_id: str, body) -> None:
    jobs = _job_store()
    job = jobs.start(job_id)
    if job is None:
        log.info("job %s is cancelled, finished or unknown: skipped", job_id)
        return
    try:
        clean_runs(settings.artifacts_dir, runs_to_keep(jobs.recent(settings.jobs_history), job))
    except JobsUnavailable as e:
        log.warning("run folders not cleaned this time: %s", e)
    body(settings, jobs, job)


@app.task(name=TRAIN_TASK)
def train_task(job_id: str) -> None:
    _run(job_id, run_train_job)


@app.task(name=INDEX_TASK)
def index_task(job_id: str) -> None:
    _run(job_id, run_index_job)


def worker_argv(loglevel: str = "INFO") -> list[str]:
    """The one definition of how the worker runs (tests, `npid up` and docker use it through `npid worker`)."""
    return ["worker", "-Q", QUEUE, "--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "prefork",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


def main(loglevel: str = "INFO") -> None:
    app.worker_main(worker_argv(loglevel))
