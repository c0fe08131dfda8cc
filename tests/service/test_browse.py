"""GET /images: the collection listed page by page, newest first or by path, filtered by label; uploads come
first, deleted images are not listed."""

from __future__ import annotations

from fastapi.testclient import TestClient
from synthetic import noise_image

from service.api.app import create_app

KEY = "browse-key"
AUTH = {"X-API-Key": KEY}


def all_pages(client, limit: int, **params) -> list[dict]:
    found, offset = [], 0
    while True:
        page = client.get("/images", params={"offset": offset, "limit": limit, **params}).json()
        assert page["offset"] == offset and page["limit"] == limit and len(page["images"]) <= limit
        found += page["images"]
        if not page["images"]:
            return found
        offset += limit


def test_pages_sorts_and_label_filter(shared_client):
    first = shared_client.get("/images").json()
    assert first["total"] == 33 and first["sort"] == "newest" and first["label"] is None
    assert first["labels"] == {"checker": 6, "disc": 6, "hstripes": 6, "odd": 9, "vstripes": 6}
    newest = all_pages(shared_client, 5)
    assert len(newest) == 33 and len({e["id"] for e in newest}) == 33  # every image once, across pages
    assert [(e["added"], e["id"]) for e in newest] == sorted(((e["added"], e["id"]) for e in newest), reverse=True)
    entry = newest[0]
    assert set(entry) == {"id", "path", "label", "added", "image_url", "thumbnail_url"}
    assert entry["image_url"] == f"/images/{entry['id']}" and entry["thumbnail_url"].endswith("/thumbnail")
    by_path = all_pages(shared_client, 7, sort="path")
    assert [e["path"] for e in by_path] == sorted(e["path"] for e in newest)
    discs = shared_client.get("/images", params={"label": "disc", "sort": "path", "limit": 100}).json()
    assert discs["total"] == 6 and discs["label"] == "disc"
    assert [e["path"] for e in discs["images"]] == [f"disc/{i:04d}.png" for i in range(6)]
    assert shared_client.get("/images", params={"label": "nothing"}).json()["total"] == 0
    assert shared_client.get("/images", params={"offset": 1000}).json()["images"] == []


def test_an_upload_is_newest_and_a_deleted_image_disappears(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        r = client.post("/images", files={"file": ("n.png", noise_image(5, 20, 20, "PNG"), "image/png")},
                        data={"label": "disc"}, headers=AUTH)
        new = r.json()["id"]
        page = client.get("/images", params={"limit": 3}).json()
        assert page["total"] == 34 and page["images"][0]["id"] == new and page["images"][0]["label"] == "disc"
        assert page["labels"]["disc"] == 7
        assert client.get("/images", params={"label": "disc"}).json()["images"][0]["id"] == new
        assert client.delete("/images/3", headers=AUTH).status_code == 200
        listed = all_pages(client, 10)
        assert len(listed) == 33 and 3 not in {e["id"] for e in listed}
        assert client.get("/images", params={"label": "checker"}).json()["total"] == 5


def test_bad_parameters_are_422_and_the_list_is_rate_limited(client, make_settings):
    for params in ({"sort": "oldest"}, {"limit": 0}, {"limit": 101}, {"offset": -1}, {"label": ""}):
        r = client.get("/images", params=params)
        assert r.status_code == 422, (params, r.text)
    with TestClient(create_app(make_settings(rate_limit_per_minute=1, rate_limit_burst=1))) as limited:
        assert limited.get("/images").status_code == 200
        assert limited.get("/images").status_code == 429
