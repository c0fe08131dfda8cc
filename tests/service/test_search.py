"""Search, images, status and page endpoints against the real app over a real trained artifact."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from index import ArtifactStore
from trainer.data import load_rgb
from trainer.embed import Embedder

AWKWARD = ["cmyk.jpg", "rotated.jpg", "deep16.png", "palette_alpha.png", "grey_alpha.png", "animated.gif",
           "photo.webp", "bitmap.bmp", "scan.tiff"]


def post_search(client, data: bytes, name: str = "q.png", **params):
    return client.post("/search", params=params, files={"file": (name, data, "application/octet-stream")})


def path_to_id(client) -> dict[str, int]:
    live = client.app.state.engine.live
    return {it.path: it.id for it in live.searcher.metadata.items}


@pytest.mark.parametrize("name", AWKWARD)
def test_a_collection_file_finds_itself_decoded_as_at_indexing_time(shared_client, collection_template, name):
    """The upload path (any mode, EXIF, first frame) must reproduce the indexing-time embedding exactly."""
    r = post_search(shared_client, (collection_template / "odd" / name).read_bytes(), name, k=3)
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["path"] == f"odd/{name}"
    assert top["id"] == path_to_id(shared_client)[f"odd/{name}"]
    assert top["score"] == pytest.approx(1.0, abs=1e-5)


def test_search_response_shape_and_k(shared_client, collection_template):
    data = (collection_template / "disc" / "0003.png").read_bytes()
    r = post_search(shared_client, data, k=5)
    assert r.status_code == 200
    body = r.json()
    live = shared_client.app.state.engine.live
    assert body["version"] == live.version == "v000001"
    assert (body["k_requested"], body["k_returned"], len(body["results"])) == (5, 5, 5)
    assert body["took_ms"] > 0
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]
    assert first["path"] == "disc/0003.png" and first["label"] == "disc"
    assert first["image_url"] == f"/images/{first['id']}"
    assert first["thumbnail_url"] == f"/images/{first['id']}/thumbnail"


def test_default_k_is_10_and_k_above_collection_size_returns_all(shared_client, collection_template):
    data = (collection_template / "checker" / "0000.png").read_bytes()
    assert post_search(shared_client, data).json()["k_returned"] == 10
    n = shared_client.app.state.engine.live.size
    body = post_search(shared_client, data, k=100).json()
    assert (body["k_requested"], body["k_returned"]) == (100, n)


def test_min_score_cuts_results(shared_client, collection_template):
    data = (collection_template / "checker" / "0000.png").read_bytes()
    everything = post_search(shared_client, data, k=100).json()["results"]
    cut = sorted(h["score"] for h in everything)[len(everything) // 2]
    body = post_search(shared_client, data, k=100, min_score=cut).json()
    assert body["k_returned"] == sum(h["score"] >= cut for h in everything)
    assert all(h["score"] >= cut for h in body["results"])


def test_search_matches_the_model_and_index_directly(shared_client, store_template):
    """The HTTP answer equals embed + search done by hand with the version's own files."""
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    body = post_search(shared_client, buf.getvalue(), k=7).json()
    lv = ArtifactStore(store_template).load()
    vec = Embedder.from_dir(lv.directory).embed([load_rgb(io.BytesIO(buf.getvalue()))])
    hits = lv.searcher.search(vec, 7)[0]
    assert [h["id"] for h in body["results"]] == [h.id for h in hits]
    np.testing.assert_allclose([h["score"] for h in body["results"]], [h.score for h in hits], atol=1e-5)


def test_similar_excludes_the_image_itself(shared_client):
    ids = path_to_id(shared_client)
    image_id = ids["hstripes/0001.png"]
    r = shared_client.get(f"/images/{image_id}/similar", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["k_returned"] == 4
    assert image_id not in [h["id"] for h in body["results"]]


def test_unknown_ids_are_404(shared_client):
    for url in ("/images/999999", "/images/999999/thumbnail", "/images/999999/similar"):
        r = shared_client.get(url)
        assert r.status_code == 404
        assert r.json() == {"detail": "no image with id 999999"}
    assert shared_client.get("/images/-1").status_code == 422
    assert shared_client.get("/images/abc").status_code == 422
    traversal = shared_client.get("/images/..%2F..%2Fetc%2Fpasswd")  # only ids route: nothing matches
    assert (traversal.status_code, traversal.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("name, content_type", [("cmyk.jpg", "image/jpeg"), ("deep16.png", "image/png"),
                                                ("photo.webp", "image/webp"), ("animated.gif", "image/gif"),
                                                ("bitmap.bmp", "image/bmp"), ("scan.tiff", "image/tiff")])
def test_image_is_served_with_its_real_content_type(shared_client, collection_template, name, content_type):
    image_id = path_to_id(shared_client)[f"odd/{name}"]
    r = shared_client.get(f"/images/{image_id}")
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.content == (collection_template / "odd" / name).read_bytes()


def test_thumbnail_is_a_small_jpeg(shared_client):
    image_id = path_to_id(shared_client)["odd/rotated.jpg"]
    r = shared_client.get(f"/images/{image_id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 160
    assert thumb.size == (20, 24)  # EXIF orientation applied: the 24 x 20 original shown rotated


def test_health_ready_metrics(shared_client, collection_template):
    assert shared_client.get("/health").json() == {"status": "ok"}
    ready = shared_client.get("/ready").json()
    assert ready["status"] == "ready" and ready["version"] == "v000001"
    assert ready["collection_size"] == 24 + len(AWKWARD) and ready["dim"] == 16
    post_search(shared_client, (collection_template / "disc" / "0000.png").read_bytes())
    text = shared_client.get("/metrics").text
    assert 'npid_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'npid_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/health"' in text
    for stage in ("decode", "embed", "search"):
        assert f'npid_search_stage_seconds_count{{stage="{stage}"}}' in text
    assert f"npid_collection_size {float(ready['collection_size'])}" in text
    assert 'npid_live_version_info{version="v000001"} 1.0' in text


def test_page_and_static_files(shared_client):
    page = shared_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="results"' in page.text
    assert shared_client.get("/static/app.js").status_code == 200
    assert shared_client.get("/static/missing.js").status_code == 404


def test_openapi_documents_the_models(shared_client):
    schema = shared_client.get("/openapi.json").json()
    assert {"SearchResponse", "SearchHit", "ImageAdded", "ErrorResponse", "Ready"} <= set(schema["components"]
                                                                                          ["schemas"])
    search = schema["paths"]["/search"]["post"]
    assert {"413", "415", "422", "429", "503"} <= set(search["responses"])
    assert "X-API-Key" in str(schema["components"]["securitySchemes"])
