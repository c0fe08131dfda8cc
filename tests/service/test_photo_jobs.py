"""A photo collection trained at photo resolution by the real Celery worker (`npid worker`, prefork pool).

Before issue 11 any job above 64 px failed in the worker ("daemonic processes are not allowed to have
children": the PIL DataLoader started processes inside Celery's pool child). Real Redis (db 11 of the
shared server), a real worker process, the real app; a small generated photo folder with bad files.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import photos
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from processes import wait_for_worker

from index import ArtifactStore
from service.api.app import create_app
from service.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/11"  # issue 11's database on the shared server
KEY = {"X-API-Key": "test-key"}


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not redis_up(), reason="no Redis at 127.0.0.1:6379")


def wait_for(predicate, timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def photo_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("photo-jobs")
    collection = photos.make_photo_folder(tmp / "photos", 40, seed=3, short=(150, 300))
    verdicts = photos.write_bad_files(collection / "odd", seed=4)
    store = tmp / "store"
    store.mkdir()
    recipe = tmp / "train.yaml"  # tiny and fast; resolution left to the recipe or the job
    recipe.write_text(yaml.safe_dump({"arch": "resnet18", "width": 4, "dim": 16, "batch_size": 16, "epochs": 1,
                                      "knn_every": 0, "knn_k": [5]}))
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(_env_file=None, collection_root=collection, artifacts_dir=store, redis_url=REDIS_URL,
                        api_key="test-key", train_config=recipe, train_device="cpu", rate_limit_per_minute=0,
                        poll_interval_s=0.1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPID_COLLECTION_ROOT": str(collection),
           "NPID_ARTIFACTS_DIR": str(store), "NPID_REDIS_URL": REDIS_URL, "NPID_API_KEY": "test-key",
           "NPID_TRAIN_CONFIG": str(recipe), "NPID_TRAIN_DEVICE": "cpu", "NPID_WORKER_THREADS": "2"}
    log = tmp / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--loglevel", "INFO"], env=env,
                              stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_worker(REDIS_URL)
    with TestClient(create_app(settings)) as client:
        yield client, settings, verdicts, log
    worker.terminate()
    worker.wait(30)
    redis.Redis.from_url(REDIS_URL).flushdb()


def run_job(client, kind: str, body: dict | None = None) -> dict:
    r = client.post(f"/jobs/{kind}", json=body, headers=KEY) if body is not None else \
        client.post(f"/jobs/{kind}", headers=KEY)
    assert r.status_code == 202, r.text

    def done():
        job = client.get(f"/jobs/{r.json()['job_id']}", headers=KEY).json()  # with the key: the config too
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, 240, f"{kind} job did not finish")


def test_photo_job_at_photo_resolution_in_the_worker_then_search_and_reindex(photo_stack):
    client, settings, verdicts, log = photo_stack
    job = run_job(client, "train", {})  # no override: the recipe sees photos (median short side ~225 px)
    assert job["state"] == "succeeded", (job, log.read_text()[-3000:])
    version = ArtifactStore(settings.artifacts_dir).load(job["version"]).directory
    pre = json.loads((version / "preprocess.json").read_text())
    assert (pre["image_size"], pre["resize"], pre["format"]) == (96, 110, 2)  # photos: resize 110, crop 96
    cfg = json.loads((version / "manifest.json").read_text())["training"]["config"]
    export = json.loads((settings.artifacts_dir / "runs" / job["id"] / "export" / "export.json").read_text())
    assert (cfg["image_size"], cfg["stem"], cfg["hflip"]) == (96, "imagenet", True)  # CPU photo recipe
    assert "photos" in cfg["extra"]["policy"]["image_size"] and "stem" in cfg["extra"]["policy"]
    skipped = sorted(n for n, v in verdicts.items() if v == "skip")
    assert sorted(p.split("/")[-1] for p in export["skipped"]) == skipped
    assert job["metrics"]["skipped"] == len(skipped) and job["metrics"]["images"] == 40 + len(verdicts) - len(skipped)
    text = log.read_text()
    assert "DeviceFeed path" in text and "PIL loader" not in text  # trained from the image cache
    assert "daemonic" not in text and all(f"skipping odd/{name}" in text for name in skipped)

    wait_for(lambda: client.get("/ready").json().get("version") == job["version"], 30, "API did not load it")
    query = io.BytesIO()
    photos.upright(next(settings.collection_root.glob("*/*.jpg"))).save(query, "JPEG")
    r = client.post("/search", files={"file": ("q.jpg", query.getvalue(), "image/jpeg")}, params={"k": 3})
    assert r.status_code == 200, r.text

    again = run_job(client, "index")  # re-embeds from the same cache: nothing decoded twice
    assert again["state"] == "succeeded", again
    last = log.read_text().split("image cache: ")[-1]
    assert last.startswith(f"{job['metrics']['images']} reused, 0 decoded"), last[:200]


def test_job_overrides_win_over_the_recipe(photo_stack):
    client = photo_stack[0]
    job = run_job(client, "train", {"image_size": 48, "stem": "imagenet", "width": 8})
    assert job["state"] == "succeeded", job
    cfg = job["metrics"]["train_config"]
    assert (cfg["image_size"], cfg["stem"], cfg["width"]) == (48, "imagenet", 8)  # the recipe says cifar at 48


def test_cpu_budget_takes_the_recipe_for_photos_and_small_images(tmp_path):
    from service.jobs.pipeline import training_config
    from trainer.recipe import CollectionFacts

    settings = Settings(_env_file=None, collection_root=tmp_path, artifacts_dir=tmp_path, cpu_train_minutes=4.0)
    photo = training_config(settings, {}, CollectionFacts(5000, 300), cuda=False)
    small = training_config(settings, {}, CollectionFacts(5000, 32), cuda=False)
    assert (photo.image_size, photo.stem, photo.width) == (96, "imagenet", 16)
    assert (small.image_size, small.stem) == (32, "cifar")
    assert photo.minutes == small.minutes == 4.0  # both trained for the budget, whatever their cost per image
    pinned = training_config(settings, {"epochs": 3, "image_size": 128}, CollectionFacts(5000, 300), cuda=False)
    assert (pinned.epochs, pinned.image_size) == (3, 128)
    gpu = training_config(settings, {}, CollectionFacts(5000, 300), cuda=True)
    assert (gpu.image_size, gpu.arch, gpu.width) == (224, "resnet50", 64)
