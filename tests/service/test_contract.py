"""The OpenAPI contract holds: schemathesis (every check, stateful included, a bounded number of examples,
a fixed seed) against the real app on a real uvicorn, with a real Redis (db 14 of the shared server) and a real
Celery worker behind the jobs routes, and the write key, so writes, reads, bounds, auth and error bodies are all
exercised. Uploads are generated as real images of every allowed format (the schema's "image" format)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import redis
import schemathesis
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from PIL import Image
from processes import Worker, wait_for

from service.jobs.store import JobStore

REDIS_URL = "redis://127.0.0.1:6379/14"
KEY = "contract-key"
AUTH = {"X-API-Key": KEY}
BOUNDED = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck), stateful_step_count=4)


def image_file(fmt: str, width: int, height: int, pixel_seed: int) -> bytes:
    pixels = np.random.default_rng(pixel_seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


# the schema's "image" string format: what a client may upload, in every allowed format
schemathesis.openapi.format("image", st.builds(image_file, st.sampled_from(["JPEG", "PNG", "WEBP", "GIF", "BMP",
                                                                           "TIFF"]),
                                               st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**16)))


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    """A real `npid worker` on db 14 of the shared Redis, with a tiny recipe and a 3-second job time limit, so
    the jobs that schemathesis posts (with any overrides the schema allows) end quickly."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).flushdb()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379 (scripts/test.sh starts one)")
    tmp = tmp_path_factory.mktemp("contract")
    recipe = tmp / "train.yaml"
    recipe.write_text(yaml.safe_dump({"image_size": 16, "arch": "resnet18", "width": 4, "dim": 16, "batch_size": 16,
                                      "epochs": 1, "knn_every": 0, "knn_k": [5]}))
    return tmp, recipe


@pytest.fixture
def schema(worker_env, serve, make_settings, dirs):
    tmp, recipe = worker_env
    collection, store = dirs
    settings = make_settings(redis_url=REDIS_URL, api_key=KEY, thumbnail_rate_limit_per_minute=0,
                             train_config=recipe, train_device="cpu", jobs_time_limit_s=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPID_COLLECTION_ROOT": str(collection),
           "NPID_ARTIFACTS_DIR": str(store), "NPID_REDIS_URL": REDIS_URL, "NPID_API_KEY": KEY,
           "NPID_TRAIN_CONFIG": str(recipe), "NPID_TRAIN_DEVICE": "cpu", "NPID_WORKER_THREADS": "1",
           "NPID_JOBS_TIME_LIMIT_S": "3"}
    worker = Worker(env, tmp / "worker.log")
    worker.start()
    try:
        jobs = JobStore(REDIS_URL)
        wait_for(lambda: jobs.workers_alive(), 60, "the worker never announced itself", every_s=0.1)
        with serve(settings) as url:
            yield schemathesis.openapi.from_url(url + "/openapi.json")
    finally:
        worker.kill()  # a job may be running: no need to wait for Celery's warm shutdown


def test_the_api_keeps_its_openapi_contract(schema):
    """Each operation on its own, then stateful sequences (links inferred from ids and Location headers)."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @seed(14)
        @BOUNDED
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(headers=AUTH)

        try:
            check()
        except Exception as e:  # collect every operation's failures, then report them together
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)

    machine = schema.as_state_machine()

    class Authenticated(machine):
        def get_call_kwargs(self, case):
            return {"headers": AUTH}

    run_state_machine_as_test(Authenticated, settings=settings(BOUNDED, max_examples=4))
