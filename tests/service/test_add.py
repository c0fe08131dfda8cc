"""POST /images: the upload joins the collection folder and the index, and survives a restart."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from synthetic import noise_image

from service.api.app import create_app

KEY = "add-key"
AUTH = {"X-API-Key": KEY}


def jpeg(seed: int) -> bytes:
    return noise_image(seed, 28, 20, "JPEG")


def add(client, data: bytes, label: str | None = None):
    form = {} if label is None else {"label": label}
    return client.post("/images", files={"file": ("new.jpg", data, "image/jpeg")}, data=form, headers=AUTH)


def test_added_image_is_searchable_served_and_survives_restart(make_settings, dirs):
    collection, _ = dirs
    data = jpeg(11)
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        before = client.get("/ready").json()
        r = add(client, data, label="disc")
        assert r.status_code == 201, r.text
        added = r.json()
        assert added["version"] == "v000002" and added["collection_size"] == before["collection_size"] + 1
        assert added["label"] == "disc" and added["path"].startswith("disc/") and added["path"].endswith(".jpg")
        assert (collection / added["path"]).read_bytes() == data
        assert client.get("/ready").json()["version"] == "v000002"  # the new version serves at once
        top = client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")}).json()["results"][0]
        assert top["id"] == added["id"] and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert client.get(added["image_url"]).content == data
        assert client.get(added["thumbnail_url"]).headers["content-type"] == "image/jpeg"

    with TestClient(create_app(make_settings(api_key=KEY))) as restarted:
        ready = restarted.get("/ready").json()
        assert (ready["version"], ready["collection_size"]) == ("v000002", added["collection_size"])
        top = restarted.post("/search", files={"file": ("q.jpg", data, "image/jpeg")}).json()["results"][0]
        assert (top["id"], top["path"], top["label"]) == (added["id"], added["path"], "disc")


def test_the_same_image_twice_is_added_once(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        first = add(client, jpeg(5))
        again = add(client, jpeg(5))
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["id"] == first.json()["id"] and again.json()["version"] == first.json()["version"]
        assert first.json()["path"].startswith("uploads/") and first.json()["label"] is None


def test_labels_must_be_plain_folder_names(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        for label in ("../escape", "a/b", ".hidden", "x" * 65, "sp ace"):
            r = add(client, jpeg(1), label=label)
            assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: body.label"), label


def test_bad_uploads_are_refused_before_touching_the_collection(make_settings, dirs):
    collection, store = dirs
    files_before = sorted(p for p in collection.rglob("*"))
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
        r = client.post("/images", files={"file": ("x.svg", svg, "image/svg+xml")}, headers=AUTH)
        assert r.status_code == 415
        r = client.post("/images", files={"file": ("x.jpg", jpeg(2)[:300], "image/jpeg")}, headers=AUTH)
        assert r.status_code == 422
        assert client.get("/ready").json()["version"] == "v000001"
    assert sorted(p for p in collection.rglob("*")) == files_before


def test_an_unwritable_collection_folder_is_a_clear_503(make_settings, dirs):
    collection, _ = dirs
    (collection / "blocked").write_text("a file where the label folder would go")
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        r = add(client, jpeg(3), label="blocked")
        assert (r.status_code, r.json()) == (503, {"detail": "the server cannot store uploads in its collection "
                                                             "folder"})
        assert client.get("/ready").json()["version"] == "v000001"


def test_nothing_is_stored_while_no_version_is_live(make_settings, dirs, tmp_path):
    collection, _ = dirs
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with TestClient(create_app(make_settings(api_key=KEY, artifacts_dir=empty))) as client:
        r = add(client, jpeg(4))
        assert r.status_code == 503 and r.json()["detail"].startswith("no index version has been published")
    assert not (collection / "uploads").exists()
