"""Background jobs end to end: a real Redis (our own redis-server, so it can be stopped), a real Celery worker
process (`npid worker`), the real app. Tiny model, tiny collection."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ports
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from index import ArtifactStore
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

KEY = {"X-API-Key": "test-key"}
LOCK_TTL_S = 3.0


class RedisServer:
    """A private redis-server on a free port, stoppable and restartable on the same port."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = ports.free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(), 10, "redis-server did not start")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Worker:
    """`npid worker` as a child process in its own process group (so SIGKILL takes the pool child too)."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.proc = env, log, None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--loglevel", "INFO"],
                                     env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout_s: float, message: str, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def stack(collection_template, store_template, tmp_path_factory):
    """(client, settings, redis server, worker) over private copies of the collection and the store."""
    tmp = tmp_path_factory.mktemp("jobs")
    collection = shutil.copytree(collection_template, tmp / "images")
    store = shutil.copytree(store_template, tmp / "store")
    recipe = tmp / "train.yaml"
    recipe.write_text(yaml.safe_dump({"image_size": 16, "arch": "resnet18", "width": 4, "dim": 16,
                                      "batch_size": 16, "epochs": 2, "knn_every": 0, "knn_k": [5]}))
    server = RedisServer(tmp)
    server.start()
    settings = Settings(_env_file=None, collection_root=collection, artifacts_dir=store, redis_url=server.url,
                        api_key="test-key", train_config=recipe, train_device="cpu", rate_limit_per_minute=0,
                        poll_interval_s=0.1, jobs_lock_ttl_s=LOCK_TTL_S, jobs_heartbeat_s=0.3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPID_COLLECTION_ROOT": str(collection),
           "NPID_ARTIFACTS_DIR": str(store), "NPID_REDIS_URL": server.url, "NPID_API_KEY": "test-key",
           "NPID_TRAIN_CONFIG": str(recipe), "NPID_TRAIN_DEVICE": "cpu", "NPID_WORKER_THREADS": "1",
           "NPID_JOBS_LOCK_TTL_S": str(LOCK_TTL_S), "NPID_JOBS_HEARTBEAT_S": "0.3"}
    worker = Worker(env, tmp / "worker.log")
    worker.start()
    with TestClient(create_app(settings)) as client:
        yield client, settings, server, worker
    worker.stop()
    server.stop()


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def search(client) -> dict:
    r = client.post("/search", files={"file": ("q.png", png_bytes(), "image/png")}, params={"k": 3})
    assert r.status_code == 200, r.text
    return r.json()


def finished(client, job_id: str, timeout_s: float = 120) -> dict:
    def done():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout_s, f"job {job_id} did not finish")


def running_with_progress(client, job_id: str) -> dict:
    def going():
        job = client.get(f"/jobs/{job_id}").json()
        assert job["state"] not in ("failed", "succeeded"), job
        return job if job["state"] == "running" and job["progress"].get("phase") == "training" else None

    return wait_for(going, 120, f"job {job_id} never reported training progress", every_s=0.02)


def current(settings: Settings) -> str | None:
    return ArtifactStore(settings.artifacts_dir).current_version()


def test_train_job_publishes_a_version_that_search_then_uses(stack):
    client, settings, _, _ = stack
    before = search(client)["version"]
    r = client.post("/jobs/train", json={"epochs": 40}, headers=KEY)  # long enough to watch it run
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    seen = running_with_progress(client, job_id)
    assert seen["progress"]["epochs"] == 40 and seen["progress"]["epoch"] >= 1
    job = finished(client, job_id)
    assert job["state"] == "succeeded", job
    assert job["version"] and job["version"] != before and job["metrics"]["epochs"] == 40
    assert current(settings) == job["version"]
    wait_for(lambda: client.get("/ready").json().get("version") == job["version"], 20, "API did not swap")
    assert search(client)["version"] == job["version"]  # no restart
    assert job_id in [j["id"] for j in client.get("/jobs").json()]


def test_unknown_job_is_404_and_bad_overrides_are_422(stack):
    client = stack[0]
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/train", json={"epochs": 0}, headers=KEY).status_code == 422
    assert client.post("/jobs/train", json={"learning_rate": 1}, headers=KEY).status_code == 422
    assert client.post("/jobs/train", json={"backbone": "vgg16"}, headers=KEY).status_code == 422
    assert client.post("/jobs/train").status_code == 401


def test_two_concurrent_triggers_one_202_one_409_then_cancel(stack):
    client, settings, _, _ = stack
    version = current(settings)
    barrier, answers = threading.Barrier(2), []

    def trigger():
        barrier.wait()
        answers.append(client.post("/jobs/train", json={"epochs": 40}, headers=KEY))

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [202, 409]
    accepted = next(a for a in answers if a.status_code == 202).json()["job_id"]
    assert next(a for a in answers if a.status_code == 409).json()["job_id"] == accepted

    running_with_progress(client, accepted)
    assert client.delete(f"/jobs/{accepted}", headers=KEY).status_code == 200
    job = finished(client, accepted, 60)
    assert job["state"] == "cancelled" and job["version"] is None
    assert current(settings) == version  # nothing published
    again = client.post("/jobs/train", json={"epochs": 1}, headers=KEY)  # the lock is free again
    assert again.status_code == 202
    assert finished(client, again.json()["job_id"])["state"] == "succeeded"


def test_index_job_reembeds_new_files_with_the_live_model(stack):
    client, settings, _, _ = stack
    wait_for(lambda: client.get("/ready").json().get("version") == current(settings), 20, "API not on current")
    before = client.get("/ready").json()
    (settings.collection_root / "disc" / "added-later.png").write_bytes(png_bytes(seed=5))
    r = client.post("/jobs/index", headers=KEY)
    assert r.status_code == 202, r.text
    job = finished(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["metrics"]["model_from"] == before["version"] and job["version"] != before["version"]
    wait_for(lambda: client.get("/ready").json().get("version") == job["version"], 20, "API did not swap")
    assert client.get("/ready").json()["collection_size"] == before["collection_size"] + 1
    hits = search(client)["results"]
    assert all(h["path"] for h in hits)


def test_sigkilled_worker_fails_the_job_frees_the_lock_and_old_version_serves(stack):
    client, settings, _, worker = stack
    version = current(settings)
    job_id = client.post("/jobs/train", json={"epochs": 200}, headers=KEY).json()["job_id"]
    running_with_progress(client, job_id)
    worker.kill()
    job = finished(client, job_id, LOCK_TTL_S + 30)
    assert job["state"] == "failed" and "worker lost" in job["error"]
    assert current(settings) == version and search(client)["version"] == version

    worker.start()
    r = client.post("/jobs/train", json={"epochs": 1}, headers=KEY)  # lock released
    assert r.status_code == 202, r.text
    assert finished(client, r.json()["job_id"])["state"] == "succeeded"


def test_redis_down_search_answers_jobs_503_then_recover(stack):
    client, _, server, _ = stack
    server.stop()
    try:
        assert search(client)["k_returned"] > 0
        t = time.monotonic()
        r = client.get("/jobs")
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        assert time.monotonic() - t < 5
        assert client.post("/jobs/train", headers=KEY).status_code == 503
    finally:
        server.start()
    r = wait_for(lambda: (lambda a: a if a.status_code == 202 else None)(
        client.post("/jobs/train", json={"epochs": 1}, headers=KEY)), 20, "jobs did not come back after Redis")
    assert finished(client, r.json()["job_id"], 120)["state"] == "succeeded"  # the worker reconnected too


def test_adds_and_deletes_during_training_survive_its_publish(stack):
    client, settings, _, _ = stack
    wait_for(lambda: client.get("/ready").json().get("version") == current(settings), 20, "API not on current")
    before = client.get("/ready").json()
    victim = search(client)["results"][0]
    r = client.post("/jobs/train", json={"epochs": 40}, headers=KEY)
    assert r.status_code == 202, r.text
    running_with_progress(client, r.json()["job_id"])
    upload = png_bytes(seed=77)
    added = client.post("/images", files={"file": ("new.png", upload, "image/png")}, headers=KEY)
    assert added.status_code == 201, added.text
    assert client.delete(f"/images/{victim['id']}", headers=KEY).status_code == 200
    job = finished(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    wait_for(lambda: client.get("/ready").json().get("version") == job["version"], 20, "API did not swap")
    manifest = ArtifactStore(settings.artifacts_dir).manifest(job["version"])
    assert manifest["origin"]["kind"] == "build" and manifest["origin"]["rebased"]["carried"] == 1
    image_id = added.json()["id"]
    assert client.get(f"/images/{image_id}").content == upload  # the same id, after the retrain
    hit = client.post("/search", files={"file": ("q.png", upload, "image/png")}, params={"k": 1}).json()
    assert hit["version"] == job["version"] and hit["results"][0]["id"] == image_id
    assert hit["results"][0]["score"] > 0.999  # embedded with the new model, like the query
    assert client.get(f"/images/{victim['id']}").status_code == 404
    assert client.get("/ready").json()["collection_size"] == before["collection_size"]
