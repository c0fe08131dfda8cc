"""Live version: start without one, swap under load with zero failures, refuse damaged versions."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from index import ArtifactStore
from index.pointer import Pointer, write_pointer
from service.api.app import create_app
from trainer.embed import model_config, save_model
from trainer.model import build_encoder

QUERY = "odd/cmyk.jpg"  # a collection image: every answer must find it first, with score 1


def eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_not_ready_until_a_version_is_published(make_settings, trained_export, collection_template, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with TestClient(create_app(make_settings(artifacts_dir=empty))) as client:
        detail = "no index version has been published in <path>"  # the server's folder is not shown
        assert client.get("/health").status_code == 200
        assert client.get("/ready").headers["Retry-After"] == "5"
        assert (client.get("/ready").status_code, client.get("/ready").json()) == (503, {"detail": detail})
        r = client.post("/search", files={"file": ("q.jpg", (collection_template / QUERY).read_bytes())})
        assert (r.status_code, r.json()) == (503, {"detail": detail})
        ArtifactStore(empty).build(trained_export, collection_root=collection_template)
        eventually(lambda: client.get("/ready").status_code == 200)  # picked up by the poller
        assert client.get("/ready").json()["version"] == "v000001"


async def hammer(url: str, query: bytes, stop: asyncio.Event, log: list):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                r = await http.post("/search", params={"k": 3}, files={"file": ("q.jpg", query, "image/jpeg")})
                body = r.json()
                log.append((r.status_code, body.get("version"), body.get("results", [{}])[0]))
            except httpx.HTTPError as e:
                log.append((repr(e), None, None))


def test_swap_under_concurrent_load_fails_no_request(serve, make_settings, dirs, other_export,
                                                     collection_template):
    _, store_dir = dirs
    query = (collection_template / QUERY).read_bytes()

    async def scenario(url: str) -> list[list]:
        stop = asyncio.Event()
        logs: list[list] = [[] for _ in range(8)]
        workers = [asyncio.create_task(hammer(url, query, stop, log)) for log in logs]
        await asyncio.sleep(1.0)  # load on v000001
        await asyncio.to_thread(ArtifactStore(store_dir).build, other_export, collection_root=collection_template)
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(300):
                if (await http.get("/ready")).json()["version"] == "v000002":
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # load on v000002
        stop.set()
        await asyncio.gather(*workers)
        return logs

    with serve(make_settings(poll_interval_s=0.05)) as url:
        logs = asyncio.run(scenario(url))

    answers = [a for log in logs for a in log]
    failures = [a for a in answers if a[0] != 200]
    assert not failures, failures[:5]
    assert {a[1] for a in answers} == {"v000001", "v000002"}
    for _, version, top in answers:  # model and index always from the same version
        assert top["path"] == QUERY and top["score"] == pytest.approx(1.0, abs=1e-5), (version, top)
    for log in logs:  # versions only move forward
        versions = [v for _, v, _ in log]
        assert versions == sorted(versions)
    assert len(answers) > 40


def test_damaged_or_incompatible_versions_are_refused_and_the_old_one_keeps_serving(
        make_settings, dirs, other_export, collection_template, tmp_path, caplog):
    _, store_dir = dirs
    store = ArtifactStore(store_dir)
    query = {"file": ("q.jpg", (collection_template / QUERY).read_bytes())}
    with caplog.at_level(logging.ERROR, logger="service"), \
            TestClient(create_app(make_settings(poll_interval_s=0.05))) as client:
        engine = client.app.state.engine

        # 1. a file damaged on disk after it was sealed: the checksum check refuses it
        damaged = store.build(other_export, collection_root=collection_template, publish=False)
        with open(store.directory(damaged) / "model.pt", "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00" * 64)
        write_pointer(store_dir, Pointer(damaged, ("v000001",)))
        eventually(lambda: f"refused version {damaged}" in caplog.text)
        assert client.get("/ready").json()["version"] == "v000001"
        assert client.post("/search", files=query).json()["version"] == "v000001"
        assert engine.check_for_new_version() is False  # not retried until CURRENT moves

        # 2. whole files, but a model that embeds in another dimension than its index
        export = shutil.copytree(other_export, tmp_path / "bad-export")
        save_model(build_encoder("resnet18", 8, 16, width=8), model_config("resnet18", 8, 16, 8),
                   export / "model.pt")
        incompatible = store.build(export, collection_root=collection_template)
        eventually(lambda: f"refused version {incompatible}" in caplog.text)
        assert "model embeds in 8 dimensions, the index holds 16" in caplog.text
        assert client.post("/search", files=query).status_code == 200
        assert client.get("/ready").json()["version"] == "v000001"

        # 3. a good version after the bad ones is taken
        good = store.build(other_export, collection_root=collection_template)
        eventually(lambda: client.get("/ready").json()["version"] == good)
        metrics = client.get("/metrics").text
        assert 'npid_version_swaps_total{outcome="refused"} 2.0' in metrics
        assert 'npid_version_swaps_total{outcome="swapped"} 2.0' in metrics  # v000001 at start, then good


def test_reload_is_callable_by_the_jobs_code(make_settings, dirs, other_export, collection_template):
    _, store_dir = dirs
    with TestClient(create_app(make_settings(poll_interval_s=3600))) as client:  # poller out of the way
        engine = client.app.state.engine
        old = engine.live
        version = ArtifactStore(store_dir).build(other_export, collection_root=collection_template)
        assert engine.live is old  # nothing polled yet
        assert engine.check_for_new_version() is True
        assert engine.live.version == version and engine.live.embedder is not old.embedder
        assert engine.check_for_new_version() is False
        assert engine.reload("v000001").version == "v000001"  # an explicit version, e.g. a rollback
        assert torch.equal(next(engine.live.embedder.encoder.parameters()),
                           next(old.embedder.encoder.parameters()))
