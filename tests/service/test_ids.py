"""Stable ids through the API: batch adds (deduplicated by content), deletes, content ETags, versions and a
rollback that carries the adds, and file names that are not UTF-8."""

from __future__ import annotations

import hashlib
import os
import shutil
import time

from fastapi.testclient import TestClient
from synthetic import noise_image

from index import ArtifactStore
from service.api.app import create_app
from service.live import compaction
from trainer.augment import Preprocess
from trainer.data import ImageFolder
from trainer.embed import embed_dataset, load_model_and_config, write_export

KEY = "ids-key"
AUTH = {"X-API-Key": KEY}


def png(seed: int) -> bytes:
    return noise_image(seed, 18, 22, "PNG")


def post(client, *blobs: bytes):
    return client.post("/images", files=[("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)],
                       headers=AUTH)


def top(client, data: bytes) -> dict:
    r = client.post("/search", files={"file": ("q.png", data, "image/png")}, params={"k": 1})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_batch_add_makes_one_version_and_known_bytes_answer_their_id(make_settings, dirs):
    collection, store = dirs
    existing = (collection / "odd" / "bitmap.bmp").read_bytes()  # indexed under another path than an upload's
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        before = client.get("/ready").json()
        segment = client.app.state.engine.live.searcher.segment
        r = post(client, png(1), existing, png(2), png(1))
        assert r.status_code == 201, r.text
        assert client.app.state.engine.live.searcher.segment is segment  # O(delta): the live segment is reused
        body = r.json()
        assert body["version"] == "v000002" and body["collection_size"] == before["collection_size"] + 2
        first, known, second, repeat = body["images"]
        assert (first["created"], known["created"], second["created"], repeat["created"]) == (True, False, True, False)
        assert known["path"] == "odd/bitmap.bmp" and repeat["id"] == first["id"] and first["id"] != second["id"]
        assert top(client, png(2))["id"] == second["id"]
        again = post(client, png(2), existing)
        assert again.status_code == 200 and again.json()["version"] == "v000002"  # nothing new: no version
        assert [i["id"] for i in again.json()["images"]] == [second["id"], known["id"]]
        single = post(client, existing)
        assert single.status_code == 200 and single.json()["id"] == known["id"]  # one file: the single shape
        assert not (collection / "uploads" / f"{hashlib.sha256(existing).hexdigest()[:24]}.bmp").exists()
        too_many = post(client, *[png(3)] * 33)
        assert too_many.status_code == 422 and "at most 32" in too_many.json()["detail"]  # the schema's maxItems
    assert [i.kind for i in ArtifactStore(store).list()] == ["model", "update"]


def test_background_compaction_folds_the_adds_keeping_ids(make_settings, dirs, monkeypatch):
    collection, _ = dirs
    monkeypatch.setattr(compaction, "COMPACT_MIN_DELTA", 3)  # fold from 3 changes on, not 2048
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        added = post(client, png(31), png(32)).json()["images"]
        assert client.app.state.engine.live.delta_size == 2  # under the threshold: no compaction
        gone = top(client, (collection / "odd" / "cmyk.jpg").read_bytes())["id"]
        deleted = client.delete(f"/images/{gone}", headers=AUTH).json()  # 2 added + 1 removed: fold

        def compacted():
            ready = client.get("/ready").json()["version"]
            latest = client.get("/versions").json()["versions"][-1]
            return latest["origin"] == "compact" and latest["current"] and ready == latest["version"]

        deadline = time.monotonic() + 30
        while not compacted():
            assert time.monotonic() < deadline, "the compaction was not published and served"
            time.sleep(0.05)
        live = client.app.state.engine.live
        assert live.delta_size == 0 and live.size == deleted["collection_size"]
        assert [top(client, png(seed))["id"] for seed in (31, 32)] == [a["id"] for a in added]
        assert gone not in live.searcher.metadata and gone not in live.searcher.segment


def test_delete_an_upload_and_a_collection_image(make_settings, dirs):
    collection, _ = dirs
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        size = client.get("/ready").json()["collection_size"]
        added = post(client, png(5)).json()
        assert client.delete(f"/images/{added['id']}").status_code == 401
        r = client.delete(f"/images/{added['id']}", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["file_deleted"] is True and not (collection / added["path"]).exists()
        assert client.get(f"/images/{added['id']}").status_code == 404
        assert top(client, png(5))["id"] != added["id"]

        target = top(client, (collection / "odd" / "scan.tiff").read_bytes())
        r = client.delete(f"/images/{target['id']}", headers=AUTH)
        assert r.json()["file_deleted"] is False and (collection / "odd" / "scan.tiff").exists()
        assert r.json()["collection_size"] == size - 1
        assert client.get(f"/images/{target['id']}/similar").status_code == 404
        assert client.delete(f"/images/{target['id']}", headers=AUTH).status_code == 404
        assert client.delete("/images/999999", headers=AUTH).status_code == 404

        readded = post(client, png(5)).json()  # the same bytes again: a new id, never the deleted one
        assert readded["id"] > added["id"]
        ids = [h["id"] for h in client.get(f"/images/{readded['id']}/similar", params={"k": 100}).json()["results"]]
        for image_id in ids:  # every other image
            assert client.delete(f"/images/{image_id}", headers=AUTH).status_code == 200
        last = client.delete(f"/images/{readded['id']}", headers=AUTH)
        assert last.status_code == 409 and "empty" in last.json()["detail"]
        assert client.get("/ready").json()["collection_size"] == 1


def test_etag_follows_content_and_protected_reads_are_private(make_settings, dirs):
    collection, _ = dirs
    data = (collection / "odd" / "photo.webp").read_bytes()
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        image_id = top(client, data)["id"]
        r = client.get(f"/images/{image_id}")
        assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"' and "public" not in r.headers[
            "cache-control"]
        assert client.get(f"/images/{image_id}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        thumb = client.get(f"/images/{image_id}/thumbnail")
        assert thumb.headers["etag"] != r.headers["etag"]
        assert client.get(f"/images/{image_id}/thumbnail",
                          headers={"If-None-Match": thumb.headers["etag"]}).status_code == 304
        (collection / "odd" / "photo.webp").write_bytes(png(8))  # replaced in place: same id, new content
        changed = client.get(f"/images/{image_id}", headers={"If-None-Match": r.headers["etag"]})
        assert changed.status_code == 200 and changed.headers["etag"] == f'"{hashlib.sha256(png(8)).hexdigest()}"'
    with TestClient(create_app(make_settings(api_key=KEY, protect_reads=True))) as client:
        r = client.get(f"/images/{image_id}", headers=AUTH)
        assert r.status_code == 200 and "public" not in r.headers["cache-control"]
        assert "private" in r.headers["cache-control"] and r.headers["vary"] == "X-API-Key"
        assert client.get(f"/images/{image_id}/thumbnail", headers=AUTH).headers["vary"] == "X-API-Key"


def test_versions_list_kinds_and_rollback_carries_adds(make_settings, dirs, other_export, collection_template):
    _, store_dir = dirs
    store = ArtifactStore(store_dir)
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        first = client.get("/ready").json()["version"]
        store.build(other_export, collection_root=collection_template)  # a retrain
        added = post(client, png(11), png(12)).json()["images"]
        listed = client.get("/versions").json()["versions"]
        assert [(v["kind"], v["origin"]) for v in listed] == [("model", "build"), ("model", "build"),
                                                              ("update", "add")]
        assert listed[-1]["current"] and listed[-1]["size"] == listed[0]["size"] + 2
        assert all(v["model"] and v["created"] for v in listed) and listed[0]["model"] != listed[1]["model"]
        assert client.post(f"/versions/{first}/publish").status_code == 401
        assert client.post("/versions/v999999/publish", headers=AUTH).status_code == 404
        r = client.post(f"/versions/{first}/publish", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["collection_size"] == listed[-1]["size"]
        live = store.load()
        assert live.manifest["files"]["model.pt"] == store.manifest(first)["files"]["model.pt"]
        for image in added:  # carried onto the old model with their ids
            assert top(client, png(11 if image is added[0] else 12))["id"] == image["id"]


def test_a_file_name_that_is_not_utf8_is_searchable_and_served(tmp_path, collection_template, store_template,
                                                               make_settings):
    root = shutil.copytree(collection_template, tmp_path / "latin1")
    folder, name = os.fsdecode(b"\xe9t\xe9"), os.fsdecode(b"caf\xe9.png")  # Latin-1 names: not UTF-8
    data = png(21)
    (root / folder).mkdir()
    (root / folder / name).write_bytes(data)
    model = ArtifactStore(store_template).load()
    encoder, cfg = load_model_and_config(model.directory / "model.pt")
    pre = Preprocess.load(model.directory / "preprocess.json")
    ds = ImageFolder(root)
    vectors = embed_dataset(encoder, ds, pre, "cpu", progress=False).numpy()
    export = write_export(tmp_path / "export", vectors, ds, encoder, cfg, pre, {})
    ArtifactStore(tmp_path / "store").build(export, collection_root=root)
    settings = make_settings(collection_root=root, artifacts_dir=tmp_path / "store")
    with TestClient(create_app(settings)) as client:
        hit = top(client, data)
        assert hit["path"] == "\ufffdt\ufffd/caf\ufffd.png" and hit["label"] == "\ufffdt\ufffd"
        assert hit["score"] > 0.999
        assert client.get(hit["image_url"]).content == data
        assert client.get(hit["thumbnail_url"]).status_code == 200
        similar = client.get(f"/images/{hit['id']}/similar", params={"k": 50}).json()
        assert similar["k_returned"] > 0
        neighbour = similar["results"][0]["id"]
        assert any(h["id"] == hit["id"] for h in client.get(f"/images/{neighbour}/similar",
                                                            params={"k": 50}).json()["results"])
