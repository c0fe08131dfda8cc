"""A running job keeps its lease through long phases that report no progress; a dead one loses it."""

import time

import pytest
import redis

from service.jobs import JobStore
from service.pipeline import JobReporter

URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def store():
    try:
        redis.Redis.from_url(URL, socket_connect_timeout=1).flushdb()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379 (scripts/test.sh starts one)")
    return JobStore(URL, lock_ttl_s=0.6, heartbeat_s=0.1)


def test_lease_is_renewed_while_the_job_body_is_silent(store):
    job = store.start(store.create("train", {}).id)
    with JobReporter(store, job):
        time.sleep(1.5)  # 2.5 lease lengths without a progress report
        assert store.get(job.id).state == "running"
    store.succeed(job, "v000009", {})
    assert store.get(job.id).state == "succeeded"
    assert store.create("train", {}).state == "queued"  # the lock was released, not renewed after the end


def test_without_renewal_the_job_is_reaped_as_worker_lost(store):
    job = store.start(store.create("train", {}).id)
    time.sleep(0.8)  # the worker died: nobody renews
    reaped = store.get(job.id)
    assert reaped.state == "failed" and "worker lost" in reaped.error
    assert store.create("train", {}).state == "queued"
