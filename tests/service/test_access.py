"""API key on writes (and on reads when closed), per-client rate limit, CORS."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.api.auth import MISSING_KEY, NO_KEY_CONFIGURED, WRONG_KEY
from service.api.ratelimit import RateLimiter

KEY = "s3cret-key"


def png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def upload(data: bytes) -> dict:
    return {"file": ("x.png", data, "image/png")}


@pytest.mark.parametrize("header, status, detail", [
    (None, 401, MISSING_KEY),
    ("wrong", 403, WRONG_KEY),
    (KEY + "x", 403, WRONG_KEY),
    ("", 401, MISSING_KEY),
])
def test_writes_need_the_right_key(make_settings, header, status, detail):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        headers = {} if header is None else {"X-API-Key": header}
        r = client.post("/images", files=upload(png()), headers=headers)
        assert (r.status_code, r.json()) == (status, {"detail": detail})
        if status == 401:
            assert r.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
        assert client.post("/search", files=upload(png())).status_code == 200  # reads stay open


def test_writes_are_disabled_without_a_configured_key(client):
    r = client.post("/images", files=upload(png()), headers={"X-API-Key": "anything"})
    assert (r.status_code, r.json()) == (403, {"detail": NO_KEY_CONFIGURED})


def test_reads_can_be_closed(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY, protect_reads=True))) as client:
        for method, url, kw in (("POST", "/search", {"files": upload(png())}), ("GET", "/images/0", {}),
                                ("GET", "/images/0/thumbnail", {}), ("GET", "/images/0/similar", {})):
            assert client.request(method, url, **kw).status_code == 401, url
            assert client.request(method, url, headers={"X-API-Key": KEY}, **kw).status_code == 200, url
        assert client.get("/health").status_code == 200  # probes stay open
        assert client.get("/ready").status_code == 200


def test_rate_limit_answers_429_with_retry_after(make_settings):
    with TestClient(create_app(make_settings(rate_limit_per_minute=6, rate_limit_burst=3))) as client:
        codes = [client.post("/search", files=upload(png())).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = client.post("/search", files=upload(png()))
        assert r.status_code == 429
        assert r.json() == {"detail": "rate limit exceeded: at most 6 requests per minute"}
        assert 1 <= int(r.headers["retry-after"]) <= 10
        similar = client.get("/images/0/similar")  # the same bucket: every compute route counts
        assert similar.status_code == 429 and int(similar.headers["retry-after"]) >= 1
        assert client.get("/images/0").status_code == 200  # serving a file is not limited
        assert client.get("/images/0/thumbnail").status_code == 200  # thumbnails have a bucket of their own


def test_thumbnails_have_their_own_limit_with_retry_after(make_settings):
    with TestClient(create_app(make_settings(thumbnail_rate_limit_per_minute=6, thumbnail_rate_limit_burst=2))) as c:
        assert [c.get(f"/images/{i}/thumbnail").status_code for i in range(2)] == [200, 200]
        r = c.get("/images/2/thumbnail")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10
        assert c.post("/search", files=upload(png())).status_code == 200  # searches are limited apart


@pytest.mark.parametrize("protect_reads", [False, True])
def test_the_schema_declares_the_key_exactly_where_it_is_asked(make_settings, protect_reads):
    app = create_app(make_settings(api_key=KEY, protect_reads=protect_reads))
    paths = app.openapi()["paths"]
    reads = [("post", "/search"), ("get", "/images/{image_id}"), ("get", "/images/{image_id}/similar"),
             ("get", "/images/{image_id}/thumbnail"), ("get", "/jobs"), ("get", "/jobs/{job_id}")]
    writes = [("post", "/images"), ("post", "/jobs/train"), ("post", "/jobs/index"),
              ("post", "/jobs/{job_id}/cancel"), ("post", "/jobs/{job_id}/resume")]
    for method, path in reads:
        op = paths[path][method]
        assert ("security" in op) == protect_reads and ("401" in op["responses"]) == protect_reads, path
        assert "x-npid-access" not in op
    for method, path in writes:
        op = paths[path][method]
        assert op["security"] == [{"APIKeyHeader": []}] and {"401", "403"} <= set(op["responses"]), path
    for method, path in (("get", "/health"), ("get", "/ready"), ("get", "/metrics")):
        assert "security" not in paths[path][method]


def test_token_bucket_refills_per_client():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.wait("a"), limiter.wait("a")] == [0.0, 0.0]
    assert limiter.wait("a") == pytest.approx(1.0)
    assert limiter.wait("b") == 0.0  # clients are independent
    now[0] = 0.5
    assert limiter.wait("a") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.wait("a") == 0.0
    assert RateLimiter(per_minute=0, burst=1).wait("a") == 0.0  # 0 = off


def test_cors_only_when_configured(make_settings):
    origin = "https://ui.example"
    with TestClient(create_app(make_settings(cors_origins=origin))) as client:
        r = client.options("/search", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == origin
    with TestClient(create_app(make_settings())) as client:
        r = client.get("/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in r.headers
