"""The job lock's lease against a real Redis: renewal while silent, reaping when dead, fencing of a job that
lost its lease, atomic create, "no worker", history trimming, resume."""

import shutil
import threading
import time

import pytest
from processes import RedisServer, empty_redis_db

from service.jobs.reporter import JobReporter, JobTimeLimit, run_job
from service.jobs.runs import clean_runs
from service.jobs.store import LOCK, NO_WORKER, PREFIX, JobConflict, JobStore, LeaseLost

URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def store():
    empty_redis_db(URL)
    return JobStore(URL, lock_ttl_s=0.6, heartbeat_s=0.1, history=3)


def test_lease_is_renewed_while_the_job_body_is_silent(store):
    job = store.start(store.create("train", {}).id)
    with JobReporter(store, job):
        time.sleep(1.5)  # 2.5 lease lengths without a progress report
        assert store.get(job.id).state == "running"
    assert store.succeed(job, "v000009", {})
    assert store.get(job.id).state == "succeeded"
    assert store.create("train", {}).state == "queued"  # the lock was released, not renewed after the end


def test_without_renewal_the_job_is_reaped_as_worker_lost(store):
    job = store.start(store.create("train", {}).id)
    time.sleep(0.8)  # the worker died: nobody renews
    reaped = store.get(job.id)
    assert reaped.state == "failed" and "worker lost" in reaped.error
    assert store.create("train", {}).state == "queued"


def test_lease_expires_job_reaped_new_job_starts_old_worker_wakes_up(store):
    old = store.start(store.create("train", {}).id)
    stalled = JobReporter(store, old)  # the old worker's reporter, its lease thread frozen (never entered)
    time.sleep(0.8)  # lease expires
    assert store.get(old.id).state == "failed"  # reaped
    new = store.start(store.create("train", {}).id)  # a new job takes the lock
    new_lock = store.r.get(LOCK)
    assert new_lock == new.lock_value and new.lease != old.lease

    # the old worker wakes up: it may not renew, publish, or finish over anyone
    with pytest.raises(LeaseLost):
        store.renew(old)
    with pytest.raises(LeaseLost):
        stalled.fence()
    published = []

    def body(reporter):
        reporter.fence()
        published.append("v-old")  # never reached
        return "v-old", {}

    run_job(store, old, body)
    assert published == []
    assert store.r.get(LOCK) == new_lock and store.r.pttl(LOCK) > 0  # the new job's lock is untouched
    assert not store.succeed(old, "v-old", {})
    record = store.get(old.id)
    assert record.state == "failed" and "worker lost" in record.error and record.version is None
    store.renew(new)  # the new job keeps its lease
    assert store.succeed(new, "v-new", {}) and store.r.get(LOCK) is None


def test_create_writes_lock_and_record_together_and_conflicts_name_the_holder(store):
    job = store.create("index", {})
    assert store.r.get(LOCK) == f"{job.id}:queued" and store.get(job.id).state == "queued"
    with pytest.raises(JobConflict) as e:
        store.create("train", {})
    assert e.value.job_id == job.id
    assert store.r.zcard(PREFIX + "jobs") == 1  # the refused job left no record


def test_a_queued_job_without_a_worker_fails_and_frees_the_lock(store):
    store.worker_present("w1")
    waiting = store.create("train", {})
    time.sleep(0.8)  # longer than a lease: the worker's presence has expired too
    assert store.workers_alive() == 0
    job = store.get(waiting.id)
    assert job.state == "failed" and job.error == NO_WORKER
    store.worker_present("w1")
    kept = store.create("train", {})
    time.sleep(0.7)
    store.worker_present("w1")
    assert store.get(kept.id).state == "queued"  # a live worker: it stays queued


def test_history_is_trimmed_to_the_newest(store):
    ids = []
    for _ in range(5):
        job = store.create("index", {})
        store.cancel(job.id)
        ids.append(job.id)
    assert [j.id for j in store.recent(10)] == ids[::-1][:3]
    assert store.get(ids[0]) is None and not store.r.exists(PREFIX + "cancel:" + ids[0])


def test_resume_requeues_a_failed_training_job_under_a_new_lease(store):
    first = store.start(store.create("train", {"epochs": 3}).id)
    time.sleep(0.8)
    assert store.get(first.id).state == "failed"
    resumed = store.resume(first.id)
    assert resumed.state == "queued" and resumed.resume and resumed.params == {"epochs": 3}
    second = store.start(first.id)
    assert second.attempt == 2 and second.lease != first.lease
    with pytest.raises(LeaseLost):
        store.renew(first)  # the dead first attempt stays fenced off
    assert store.succeed(second, "v1", {})
    with pytest.raises(JobConflict):
        store.resume(first.id)  # succeeded: nothing to resume


def test_a_job_past_its_time_limit_stops_and_fails(store):
    job = store.start(store.create("train", {}).id)
    reporters, polls = [], []  # polls: (monotonic times the should_stop call began and ended, its answer)

    def body(reporter):
        reporters.append(reporter)
        while True:
            began = time.monotonic()
            try:
                stop = reporter.should_stop()  # raises JobTimeLimit
            except JobTimeLimit:
                polls.append((began, time.monotonic(), "time limit"))
                raise
            polls.append((began, time.monotonic(), stop))
            if stop:
                return "v", {}
            time.sleep(0.02)

    runner = threading.Thread(target=run_job, args=(store, job, body), kwargs={"time_limit_s": 0.3}, daemon=True)
    runner.start()
    runner.join(60)  # a guard against a hang only: the limit must end the job without anyone's help
    assert not runner.is_alive(), "the job went on past its time limit"
    record = store.get(job.id)
    (reporter,) = reporters
    *going_on, (_, stopped_at, last_answer) = polls
    assert last_answer == "time limit"  # the body was stopped by the limit, not by a cancel or its own return
    assert stopped_at > reporter.deadline  # ... and only once the limit had passed, never early
    # every poll before it let the body go on and began no later than the deadline: since a poll past the
    # deadline raises, the body stopped at its first poll after the limit, not some polls later
    assert all(answer is False and began <= reporter.deadline for began, _, answer in going_on)
    assert record.state == "failed" and "time limit" in record.error and record.version is None
    assert store.r.get(LOCK) is None


def test_run_folders_are_cleaned_except_those_kept(tmp_path):
    for job_id in ("a", "b", "c"):
        (tmp_path / "runs" / job_id).mkdir(parents=True)
        (tmp_path / "runs" / job_id / "checkpoint.pt").write_bytes(b"x")
    assert clean_runs(tmp_path, {"b"}) == ["a", "c"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["b"]
    assert clean_runs(tmp_path / "nowhere", set()) == []


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_an_outage_longer_than_the_lease_stops_the_job_with_a_clear_reason(tmp_path):
    server = RedisServer(tmp_path)  # private and persistent: the lock's expiry survives the restart
    server.start()
    try:
        store = JobStore(server.url, lock_ttl_s=1.0, heartbeat_s=0.1)
        job = store.start(store.create("train", {}).id)
        published = []

        def body(reporter):
            server.stop()
            time.sleep(1.6)  # Redis away for longer than the lease
            server.start()
            while not reporter.should_stop():  # raises LeaseLost
                time.sleep(0.05)
            published.append("v")
            return "v", {}

        run_job(store, job, body)
        record = store.get(job.id)
        assert published == [] and record.state == "failed" and record.version is None
        assert record.error.startswith("lease lost: Redis was unreachable for longer than the job's lease")
        assert store.r.get(LOCK) is None  # free for the next job
    finally:
        server.stop()
