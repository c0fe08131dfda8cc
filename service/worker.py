"""The Celery worker: `npid worker` (or `celery -A service.worker worker -Q training -c 1`).

Settings come from the same NPID_* variables as the API. The task bodies live in service/pipeline.py.
"""

from __future__ import annotations

import logging

from .jobs import JobStore
from .pipeline import run_index_job, run_train_job
from .queue import INDEX_TASK, QUEUE, TRAIN_TASK, make_celery
from .settings import load_settings

log = logging.getLogger(__name__)

settings = load_settings()
app = make_celery(settings.redis_url)


def _job_store() -> JobStore:
    return JobStore(settings.redis_url, settings.jobs_lock_ttl_s, settings.jobs_heartbeat_s)


def _run(job_id: str, body) -> None:
    jobs = _job_store()
    job = jobs.start(job_id)
    if job is None:
        log.info("job %s is cancelled or unknown: skipped", job_id)
        return
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
