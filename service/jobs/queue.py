"""The Celery application's configuration, shared by the API (which sends tasks) and the worker (which runs them).

Redis is both broker and result backend. Training and indexing share the `training` queue, consumed by a
worker with concurrency 1 and prefetch 1. Tasks are acknowledged on receipt: a job whose worker dies is
marked failed by its expired heartbeat (service/jobs/store.py), never silently re-run.
"""

from __future__ import annotations

from celery import Celery

QUEUE = "training"
TRAIN_TASK = "npid.train"
INDEX_TASK = "npid.index"


TIME_LIMIT_GRACE_S = 300  # past the job's own limit (checked at every step), Celery kills a wedged task


def make_celery(redis_url: str, time_limit_s: float | None = None) -> Celery:
    """The app; `time_limit_s` (worker side) is the hard limit backing the job's own NPID_JOBS_TIME_LIMIT_S."""
    app = Celery("npid", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={TRAIN_TASK: {"queue": QUEUE}, INDEX_TASK: {"queue": QUEUE}},
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        task_ignore_result=True,  # the job records in Redis are the source of truth (service/jobs/store.py)
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # the worker waits out a Redis restart
        broker_transport_options={"socket_connect_timeout": 1, "socket_timeout": 3},
        result_backend_transport_options={"socket_connect_timeout": 1, "socket_timeout": 3},
        redis_socket_connect_timeout=1,
        redis_socket_timeout=3,
        task_time_limit=None if time_limit_s is None else time_limit_s + TIME_LIMIT_GRACE_S,
    )
    return app


def send(app: Celery, task: str, job_id: str) -> None:
    """Queue a job; fails fast (no publish retries) when the broker is unreachable."""
    app.send_task(task, args=[job_id], queue=QUEUE, retry=False)
