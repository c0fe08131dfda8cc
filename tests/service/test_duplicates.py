"""GET /duplicates on the real app: planted exact and near copies uploaded into the delta are grouped with their
originals in the base segment, deleted images leave their groups, paging and the threshold override, the default
threshold (calibrated at publish, estimated by the server, or the nearest-neighbour fallback), and an HNSW
version answering as exactly as a flat one."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from index import ArtifactStore, IndexConfig
from service.api.app import create_app
from service.settings import Settings

KEY = "dup-key"
AUTH = {"X-API-Key": KEY}
EXACT = 0.9999  # exact-pixel copies score 1.0; distinct images of the fixture at most ~0.999


def png(pixels: np.ndarray, note: str) -> bytes:
    """The pixels as a PNG whose bytes differ by a text chunk: the same picture, a new file."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", note)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def upload(client, data: bytes, name: str, label: str | None = None) -> int:
    r = client.post("/images", files={"file": (name, data, "image/png")}, headers=AUTH,
                    data={} if label is None else {"label": label})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def group_ids(answer: dict) -> list[set[int]]:
    return [{m["id"] for m in g["members"]} for g in answer["groups"]]


def test_planted_copies_are_grouped_deleted_ones_leave_and_pages_hold_every_group(make_settings, dirs):
    collection, _ = dirs
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        before = client.get("/duplicates", params={"threshold": EXACT}).json()
        assert before["total_groups"] == 0 and before["threshold_source"] == "request"

        checker = pixels_of(collection / "checker" / "0002.png")  # id 2, in the base segment
        disc = pixels_of(collection / "disc" / "0004.png")  # id 10
        copy_a = upload(client, png(checker, "a"), "a.png", "checker")  # exact pixels, other bytes: in the delta
        copy_b = upload(client, png(checker, "b"), "b.png")
        copy_d = upload(client, png(checker, "d"), "d.png")
        copy_c = upload(client, png(disc, "c"), "c.png")
        noisy = np.clip(disc.astype(int) + np.random.default_rng(0).integers(-12, 13, disc.shape), 0, 255)
        near = upload(client, png(noisy.astype(np.uint8), "near"), "near.png")

        answer = client.get("/duplicates", params={"threshold": EXACT}).json()
        assert answer["version"] == client.get("/ready").json()["version"]
        assert answer["neighbours"] == 10 and answer["threshold"] == EXACT
        assert group_ids(answer)[0] == {2, copy_a, copy_b, copy_d}  # the largest first
        assert {10, copy_c} <= group_ids(answer)[1]  # (the near copy too, if it scores that high)
        assert answer["total_groups"] == 2 and answer["total_images"] == 4 + len(group_ids(answer)[1])
        first = answer["groups"][0]
        assert first["size"] == 4 and first["best_score"] >= EXACT
        for m in first["members"]:
            assert m["image_url"] == f"/images/{m['id']}" and m["thumbnail_url"] == f"/images/{m['id']}/thumbnail"
            assert m["score"] >= EXACT and m["label"] in ("checker", None)
        assert {m["path"] for m in first["members"]} >= {"checker/0002.png"}
        assert client.get(first["members"][0]["thumbnail_url"]).status_code == 200

        near_score = client.get(f"/images/{near}/similar", params={"k": 1}).json()["results"][0]["score"]
        looser = client.get("/duplicates", params={"threshold": near_score - 1e-6}).json()
        assert {10, copy_c, near} in group_ids(looser)  # the near copy joins at its own cosine

        # paging: one group a page, the same total; past the end, none
        pages = [client.get("/duplicates", params={"threshold": EXACT, "offset": i, "limit": 1}).json()
                 for i in range(3)]
        assert [group_ids(p) for p in pages[:2]] == [[g] for g in group_ids(answer)] and pages[2]["groups"] == []
        assert {p["total_groups"] for p in pages} == {2}
        assert len(client.get("/duplicates", params={"threshold": EXACT, "max_members": 2}).json()
                   ["groups"][0]["members"]) == 2

        # deletes: an upload in the delta, then the original in the segment
        assert client.delete(f"/images/{copy_b}", headers=AUTH).status_code == 200
        assert group_ids(client.get("/duplicates", params={"threshold": EXACT}).json())[0] == {2, copy_a, copy_d}
        assert client.delete("/images/10", headers=AUTH).status_code == 200
        after = client.get("/duplicates", params={"threshold": EXACT}).json()
        assert all(10 not in g and copy_b not in g for g in group_ids(after))
        assert {2, copy_a, copy_d} in group_ids(after)

        # lower thresholds link more; -1 links everything into one group
        everything = client.get("/duplicates", params={"threshold": -1}).json()
        assert everything["total_groups"] == 1 and everything["total_images"] == client.get("/ready").json()[
            "collection_size"]


def test_the_default_threshold_is_estimated_for_a_version_published_without_one(client):
    answer = client.get("/duplicates").json()
    assert answer["threshold_source"] == "estimated" and -1 <= answer["threshold"] <= 1
    again = client.get("/duplicates").json()
    assert again["threshold"] == answer["threshold"]  # measured once, cached with the model


def test_bad_parameters_are_422(client):
    for params in ({"threshold": 1.5}, {"threshold": "x"}, {"limit": 0}, {"limit": 101}, {"offset": -1},
                   {"max_members": 1}):
        r = client.get("/duplicates", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"].startswith("invalid request: query.")


def test_duplicates_are_rate_limited_like_similar(make_settings):
    with TestClient(create_app(make_settings(rate_limit_per_minute=1, rate_limit_burst=1))) as client:
        assert client.get("/duplicates", params={"threshold": 0.5}).status_code == 200
        r = client.get("/duplicates", params={"threshold": 0.5})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def synthetic_export(trained_export: Path, out: Path, vectors: np.ndarray, quality: dict | None) -> Path:
    """An export of `vectors` (files that do not exist) with the fixture's model: enough images for HNSW."""
    out.mkdir()
    for name in ("model.pt", "preprocess.json"):
        shutil.copy(trained_export / name, out / name)
    np.save(out / "embeddings.npy", vectors.astype(np.float32))
    np.save(out / "ids.npy", np.arange(len(vectors), dtype=np.int64))
    with open(out / "items.jsonl", "w") as fh:
        for i in range(len(vectors)):
            fh.write(json.dumps({"id": i, "path": f"gone/{i:05d}.png", "label": None}) + "\n")
    meta = {"format": 1, "n": len(vectors), "dim": vectors.shape[1], "collection_root": None, "classes": [],
            "skipped": [], "created": "2026-01-01T00:00:00Z", "train_config": {}, "metrics": {},
            **({"quality": quality} if quality else {})}
    (out / "export.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("quality", [None, {"self_top1": 50.0, "duplicate_threshold": 0.97}])
def test_an_hnsw_version_groups_exactly_and_its_default_threshold_says_where_it_came_from(
        trained_export, tmp_path, quality):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1100, 16))
    x[1000:1100] = x[rng.integers(0, 1000, 100)] + 0.05 * rng.standard_normal((100, 16))  # 100 near copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = tmp_path / "store"
    ArtifactStore(store).build(synthetic_export(trained_export, tmp_path / "export", x, quality),
                               IndexConfig(kind="hnsw", tune_queries=50))
    (tmp_path / "images").mkdir()
    settings = Settings(_env_file=None, collection_root=tmp_path / "images", artifacts_dir=store,
                        rate_limit_per_minute=0)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/duplicates", params={"threshold": 0.99, "limit": 100}).json()
        sims = x @ x.T
        np.fill_diagonal(sims, -2)
        linked = {(i, int(j)) for i in range(1100) for j in np.argsort(-sims[i])[:10] if sims[i, j] >= 0.99}
        assert {i for pair in linked for i in pair} == {m["id"] for g in answer["groups"] for m in g["members"]}
        assert answer["total_groups"] >= 90
        default = client.get("/duplicates").json()
        if quality is None:  # no files to measure copies of: the top 5% of nearest-neighbour cosines
            assert default["threshold_source"] == "nearest"
            assert default["threshold"] == pytest.approx(np.quantile(sims.max(1), 0.95), abs=1e-5)
        else:
            assert (default["threshold_source"], default["threshold"]) == ("calibrated", 0.97)


def test_npid_duplicates_estimates_the_same_default_as_the_server(store_template, shared_client, capsys):
    from service.cli import main

    assert main(["duplicates", "--store", str(store_template), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    served = shared_client.get("/duplicates", params={"limit": 100}).json()
    assert printed["threshold_source"] == served["threshold_source"] == "estimated"
    assert printed["threshold"] == pytest.approx(served["threshold"], abs=1e-6)
    assert printed["total_groups"] == served["total_groups"]
    assert [[m["id"] for m in g["members"]] for g in printed["groups"]] == [
        [m["id"] for m in g["members"]] for g in served["groups"]]
