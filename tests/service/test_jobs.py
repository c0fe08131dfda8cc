"""Background jobs end to end: a real Redis (our own persistent redis-server, so it can be stopped and restarted),
a real Celery worker process (`npid worker`), the real app. Tiny model, tiny collection."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from processes import RedisServer, Worker, wait_for, wait_for_worker

from index import ArtifactStore
from service.api.app import create_app
from service.jobs.runs import checkpoint_of
from service.jobs.store import LOCK
from service.launch.improve import keep_improving, next_epochs
from service.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

KEY = {"X-API-Key": "test-key"}
LOCK_TTL_S = 3.0
IMPROVE_MARGIN = 100.0  # points: no extended stage can gain that much, so its version is always kept back


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
           "NPID_JOBS_LOCK_TTL_S": str(LOCK_TTL_S), "NPID_JOBS_HEARTBEAT_S": "0.3",
           "NPID_IMPROVE_MARGIN": str(IMPROVE_MARGIN)}
    worker = Worker(env, tmp / "worker.log")
    worker.start()
    wait_for_worker(settings.redis_url)
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
    """The job's final record, as the key holder sees it (with its training config)."""
    def done():
        job = client.get(f"/jobs/{job_id}", headers=KEY).json()
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
    r = client.post("/jobs/train", json={"epochs": 40, "publish": "always"}, headers=KEY)  # long enough to watch
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
    assert client.get("/jobs/000000000000").status_code == 404
    assert client.get("/jobs/nope").status_code == 422  # not a job id
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
    assert client.post(f"/jobs/{accepted}/cancel", headers=KEY).status_code == 202
    job = finished(client, accepted, 60)
    assert job["state"] == "cancelled" and job["version"] is None
    assert current(settings) == version  # nothing published
    again = client.post("/jobs/train", json={"epochs": 1}, headers=KEY)  # the lock is free again
    assert again.status_code == 202
    assert finished(client, again.json()["job_id"])["state"] == "succeeded"


def test_gate_keeps_back_a_version_short_of_the_margin_and_it_can_be_published_by_hand(stack):
    client, settings, _, _ = stack
    r = client.post("/jobs/train", json={"epochs": 1, "publish": "always"}, headers=KEY)
    first = finished(client, r.json()["job_id"])
    assert first["state"] == "succeeded" and first["metrics"]["published"] is True, first
    quality = first["metrics"]["quality"]
    assert {"self_top1", "self_top10", "alignment", "uniformity", "sample_size", "key"} <= set(quality)
    assert 0 <= quality["self_top1"] <= quality["self_top10"] <= 100
    wait_for(lambda: client.get("/ready").json().get("version") == first["version"], 20, "API did not swap")
    assert client.get("/ready").json()["quality"] == quality  # stored in the manifest at publish

    # the next stage of the same run (the background trainer's request): extended, measured, kept back
    r = client.post("/jobs/train", json={"extend": first["id"], "epochs": 2}, headers=KEY)
    assert r.status_code == 202, r.text
    second = finished(client, r.json()["job_id"])
    m = second["metrics"]
    assert second["state"] == "succeeded" and m["published"] is False, second
    assert m["live_version"] == first["version"] and m["live_quality"]["self_top1"] == quality["self_top1"]
    assert m["quality"]["key"] == quality["key"] and "kept the live version" in m["gate"]
    log = (settings.artifacts_dir / "runs" / first["id"] / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]  # epoch 2 continued epoch 1, no restart
    assert current(settings) == first["version"]
    listed = {v["version"]: v for v in client.get("/versions").json()["versions"]}
    assert not listed[second["version"]]["current"] and listed[second["version"]]["quality"] == m["quality"]

    assert client.post(f"/versions/{second['version']}/publish").status_code == 401  # needs the key
    assert client.post("/versions/v999999/publish", headers=KEY).status_code == 404
    r = client.post(f"/versions/{second['version']}/publish", headers=KEY)
    assert r.status_code == 200 and r.json()["version"] == second["version"], r.text
    assert current(settings) == second["version"]
    wait_for(lambda: client.get("/ready").json().get("version") == second["version"], 20, "API did not swap")


def test_warm_start_fine_tunes_the_live_model_from_its_embeddings(stack):
    client, settings, _, _ = stack
    live = client.get("/ready").json()["version"]
    assert client.post("/jobs/train", json={"init": "live", "extend": "0123456789ab"}, headers=KEY).status_code == 422
    r = client.post("/jobs/train", json={"init": "live", "epochs": 1, "publish": "always"}, headers=KEY)
    job = finished(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    cfg = job["metrics"]["train_config"]
    assert cfg["bank_init"] == "features" and cfg["extra"]["init_from_version"] == live
    live_model = torch.load(ArtifactStore(settings.artifacts_dir).directory(live) / "model.pt", weights_only=True)
    same = ("arch", "dim", "image_size", "width", "stem")
    assert {k: cfg[k] for k in same} == {k: live_model["model_config"][k] for k in same}
    assert Path(cfg["init_model"]).name == "init_model.pt"
    r = client.post("/jobs/train", json={"extend": "0123456789ab", "epochs": 3}, headers=KEY)
    gone = finished(client, r.json()["job_id"])
    assert gone["state"] == "failed" and "no checkpoint" in gone["error"]


def test_background_trainer_extends_the_run_in_stages_up_to_the_full_epochs(stack, serve):
    client, settings, _, _ = stack
    r = client.post("/jobs/train", json={"epochs": 1, "publish": "always"}, headers=KEY)
    first = finished(client, r.json()["job_id"])
    assert first["state"] == "succeeded", first
    lines: list[str] = []
    with serve(settings) as base:
        last = keep_improving(base, KEY, first, lambda: True, full=3, say=lines.append)
    assert last["state"] == "succeeded" and last["metrics"]["train_config"]["epochs"] == 3, last
    assert len(lines) == 3 and "to 3 epochs" in lines[0], lines
    assert lines[1].startswith("epoch 2/3: self-retrieval top-1") and f"kept {first['version']}" in lines[1]
    assert lines[2].startswith("epoch 3/3:")  # the margin (IMPROVE_MARGIN) keeps every stage back here
    log = (settings.artifacts_dir / "runs" / first["id"] / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]
    assert next_epochs(1, 200) == 2 and next_epochs(12, 200) == 24 and next_epochs(150, 200) == 200


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
    # 200 epochs: a checkpoint every 10 (service/jobs/pipeline.py, JOB_CHECKPOINTS); die after the first
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"].get("epoch", 0) >= 12, 120, "no 12th epoch")
    worker.kill()
    # nobody renews the dead worker's lease now: the lock is already gone (-2) or expires within one lease
    # (-1, no expiry, would wedge the queue); the first read after that fails the job
    lease_left_ms = redis.Redis.from_url(settings.redis_url).pttl(LOCK)
    assert lease_left_ms == -2 or 0 < lease_left_ms <= LOCK_TTL_S * 1000, lease_left_ms
    job = finished(client, job_id)
    assert job["state"] == "failed" and "worker lost" in job["error"]
    assert current(settings) == version and search(client)["version"] == version
    assert checkpoint_of(settings.artifacts_dir, job_id).exists()  # a failed training run keeps its checkpoint
    ckpt = checkpoint_of(settings.artifacts_dir, job_id)
    saved_at = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]

    r = client.post(f"/jobs/{job_id}/resume", headers=KEY)  # no worker yet
    assert r.status_code == 503 and "no worker" in r.json()["detail"] and r.headers["Retry-After"]
    worker.start()
    wait_for_worker(settings.redis_url)
    r = client.post(f"/jobs/{job_id}/resume", headers=KEY)
    assert r.status_code == 202, r.text
    seen = running_with_progress(client, job_id)
    assert seen["attempt"] == 2 and seen["progress"]["epoch"] >= max(saved_at, 2)  # continued, not restarted from zero
    assert client.post(f"/jobs/{job_id}/cancel", headers=KEY).status_code == 202
    assert finished(client, job_id, 60)["state"] == "cancelled"
    r = client.post("/jobs/train", json={"epochs": 1}, headers=KEY)  # lock released
    assert r.status_code == 202, r.text
    done = finished(client, r.json()["job_id"])
    assert done["state"] == "succeeded" and "train_config" in done["metrics"]
    assert "train_config" not in client.get(f"/jobs/{done['id']}").json()["metrics"]  # not shown without the key
    assert "train_config" in client.get(f"/jobs/{done['id']}", headers=KEY).json()["metrics"]
    assert not (settings.artifacts_dir / "runs" / job_id).exists()  # finished runs are cleaned at the next job


def test_redis_restart_mid_job_the_job_survives_and_publishes(stack):
    client, settings, server, _ = stack
    job_id = client.post("/jobs/train", json={"epochs": 30, "publish": "always"}, headers=KEY).json()["job_id"]
    running_with_progress(client, job_id)
    server.stop()
    time.sleep(LOCK_TTL_S / 2)  # away for half a lease: progress reports and cancel checks retry meanwhile
    server.start()
    job = finished(client, job_id)
    assert job["state"] == "succeeded", job
    assert current(settings) == job["version"]


def test_redis_down_search_answers_jobs_503_then_recover(stack):
    client, _, server, _ = stack
    server.stop()
    try:
        assert search(client)["k_returned"] > 0
        answers = []  # (response, whether Redis was back when it came)
        asker = threading.Thread(target=lambda: answers.append((client.get("/jobs"), server.ping())), daemon=True)
        asker.start()
        asker.join(120)  # a guard against a hang only
        assert not asker.is_alive(), "GET /jobs hung while Redis was down"
        ((r, redis_back),) = answers
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        assert not redis_back and r.headers["Retry-After"]  # answered during the outage: it did not wait for Redis
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
    r = client.post("/jobs/train", json={"epochs": 40, "publish": "always"}, headers=KEY)
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
    hits = client.post("/search", files={"file": ("q.png", upload, "image/png")}, params={"k": 100}).json()
    assert hits["version"] == job["version"]
    own = next(h for h in hits["results"] if h["id"] == image_id)  # embedded with the new model, like the query:
    assert own["score"] > 0.999 and own["score"] >= hits["results"][0]["score"] - 1e-6  # (a tiny model may tie)
    assert client.get(f"/images/{victim['id']}").status_code == 404
    assert client.get("/ready").json()["collection_size"] == before["collection_size"]
