"""The bad-input corpus: crafted uploads of every kind, each with the exact status and detail it must get.

Files are built in memory; refused ones never reach the model, awkward-but-valid ones are decoded
exactly like the collection. Nothing, however malformed, may produce a 500.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.api.bodylimit import MULTIPART_SLACK, BodyLimitMiddleware
from service.api.uploads import CORRUPT, EMPTY, UNSUPPORTED, too_large, too_many_pixels

MAX_UPLOAD = 10 * 1024 * 1024  # the service defaults the tests run with
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    detail: str | None = None  # exact detail for errors
    filename: str = "upload.bin"
    content_type: str = "application/octet-stream"


def picture(size=(48, 40), seed=0) -> Image.Image:
    """A small RGB image with structure (not flat), so encoders see something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 // size[0], yy * 255 // size[1], (xx + yy) % 256], -1)
    noise = rng.integers(0, 40, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, bit_depth: int = 8, color: int = 2, idat: bytes = b"") -> bytes:
    """A PNG whose header declares width x height, with whatever IDAT payload is given."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bilevel_bomb(side: int) -> bytes:
    """A real, decodable 1-bit PNG of side x side black pixels: a few kB that expand to side^2 pixels."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    payload = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_header_only(side, side, bit_depth=1, color=0, idat=payload)


def animated_gif() -> bytes:
    frames = [picture(seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def gif_js_polyglot() -> bytes:
    """Valid GIF and valid JavaScript at once: width bytes are '/*', the trailer is followed by '*/...'."""
    gif = bytearray(encode(picture((8, 1)).convert("P"), "GIF"))
    gif[6:8] = b"/*"  # logical screen width 0x2a2f = 10799 px, height 1
    gif[8:10] = struct.pack("<H", 1)
    return bytes(gif) + b"*/=1;alert(document.domain);"


def jpeg_zip_polyglot() -> bytes:
    """A JPEG with a ZIP archive appended: decoders read the image and ignore the tail."""
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("payload.txt", "not an image")
    return encode(picture(), "JPEG", quality=90) + zbuf.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return encode(picture((48, 32)), "JPEG", quality=95, exif=exif)


def sixteen_bit_png() -> bytes:
    arr = (np.linspace(0, 65535, 48 * 40).reshape(40, 48)).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def cases() -> list[Case]:
    """The bad-input corpus (plus the awkward-but-valid files next to them)."""
    jpeg = encode(picture(), "JPEG", quality=90)
    png = encode(picture(), "PNG")
    webp = encode(picture(), "WEBP", quality=90)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    big = too_many_pixels(MAX_PIXELS)
    return [
        # --- refused ---
        Case("zero_bytes", b"", 422, EMPTY, "empty.jpg", "image/jpeg"),
        Case("plain_text", b"hello, this is not an image\n", 415, UNSUPPORTED, "notes.txt", "text/plain"),
        Case("text_named_png", b"just text pretending\n", 415, UNSUPPORTED, "photo.png", "image/png"),
        Case("svg", svg, 415, UNSUPPORTED, "drawing.svg", "image/svg+xml"),
        Case("html_png_polyglot", b"<html><script>alert(1)</script></html>" + png, 415, UNSUPPORTED,
             "page.png", "image/png"),
        Case("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 415, UNSUPPORTED, "doc.pdf",
             "application/pdf"),
        Case("ico_pillow_reads_it", encode(picture((32, 32)), "ICO"), 415, UNSUPPORTED, "favicon.ico",
             "image/x-icon"),
        Case("ppm_pillow_reads_it", encode(picture(), "PPM"), 415, UNSUPPORTED, "image.ppm", "image/x-portable-pixmap"),
        Case("truncated_jpeg", jpeg[: len(jpeg) // 2], 422, CORRUPT, "half.jpg", "image/jpeg"),
        Case("truncated_png", png[: len(png) * 2 // 3], 422, CORRUPT, "half.png", "image/png"),
        Case("jpeg_magic_then_garbage", b"\xff\xd8\xff" + bytes(range(256)) * 4, 422, CORRUPT, "bad.jpg",
             "image/jpeg"),
        Case("png_bad_header_crc", png[:29] + bytes(4) + png[33:], 422, CORRUPT, "crc.png", "image/png"),
        Case("truncated_webp", webp[: len(webp) // 2], 422, CORRUPT, "half.webp", "image/webp"),
        Case("bmp_magic_then_garbage", b"BM" + bytes(range(60)), 422, CORRUPT, "bad.bmp", "image/bmp"),
        Case("tiff_magic_only", b"II*\x00" + b"\xff" * 60, 422, CORRUPT, "bad.tif", "image/tiff"),
        Case("decompression_bomb", bilevel_bomb(20_000), 413, big, "bomb.png", "image/png"),
        Case("bomb_in_pillow_warning_zone", bilevel_bomb(10_000), 413, big, "zone.png", "image/png"),
        Case("huge_dimensions_header", png_header_only(7_000, 7_000), 413, big, "huge.png", "image/png"),
        Case("gif_65535_square", gif_header_claiming(65535, 65535), 413, big, "huge.gif", "image/gif"),
        Case("oversized_body", jpeg + bytes(MAX_UPLOAD), 413, too_large(MAX_UPLOAD), "big.jpg", "image/jpeg"),
        # --- accepted, decoded exactly as the collection is ---
        Case("cmyk_jpeg", encode(picture().convert("CMYK"), "JPEG", quality=90), 200, filename="cmyk.jpg"),
        Case("png_16_bit", sixteen_bit_png(), 200, filename="deep.png"),
        Case("animated_gif", animated_gif(), 200, filename="anim.gif"),
        Case("palette_png_transparency", encode(picture().convert("P"), "PNG", transparency=0), 200,
             filename="pal.png"),
        Case("grey_alpha_png", encode(picture().convert("LA"), "PNG"), 200, filename="la.png"),
        Case("exif_rotated_jpeg", exif_rotated_jpeg(), 200, filename="rotated.jpg"),
        Case("webp", encode(picture(), "WEBP", quality=90), 200, filename="x.webp"),
        Case("bmp", encode(picture(), "BMP"), 200, filename="x.bmp"),
        Case("tiff", encode(picture(), "TIFF"), 200, filename="x.tiff"),
        Case("png_with_jpg_extension", png, 200, filename="really-a-png.jpg", content_type="image/jpeg"),
        Case("gif_js_polyglot", gif_js_polyglot(), 200, filename="poly.gif", content_type="image/gif"),
        Case("jpeg_zip_polyglot", jpeg_zip_polyglot(), 200, filename="poly.jpg", content_type="image/jpeg"),
    ]


def gif_header_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and first frame declare width x height, with one tiny LZW block."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


CASES = cases()


def test_the_corpus_is_big_enough():
    refused = [c for c in CASES if c.status != 200]
    assert len(refused) >= 20 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_upload_gets_its_exact_status(shared_client, case: Case):
    r = shared_client.post("/search", params={"k": 3},
                           files={"file": (case.filename, case.data, case.content_type)})
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    if case.detail is not None:
        assert r.json() == {"detail": case.detail}
    else:
        assert r.json()["k_returned"] == 3


def test_chunked_body_over_the_limit_is_413(shared_client):
    """A chunked body carries no Content-Length: the byte count while reading must stop it."""

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\n\xff\xd8\xff"
        for _ in range(48):  # 12 MiB
            yield bytes(256 * 1024)

    r = shared_client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert (r.status_code, r.json()) == (413, {"detail": too_large(MAX_UPLOAD)})


def test_body_limit_stops_reading_once_over():
    """The middleware stops pulling body chunks as soon as the count passes the limit."""
    chunk, limit = 64 * 1024, 1024 * 1024
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": bytes(chunk), "more_body": pulled < 1000}

    async def reader(scope, receive, send):  # an app that reads its whole body
        await Request(scope, receive).body()
        await JSONResponse({"read": True})(scope, receive, send)

    sent = []

    async def send(message):
        sent.append(message)

    app = ExceptionMiddleware(BodyLimitMiddleware(reader, max_upload_bytes=limit))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled == (limit + MULTIPART_SLACK) // chunk + 1


@pytest.mark.parametrize("params, files, loc", [
    ({"k": 0}, True, "query.k"),
    ({"k": 10**9}, True, "query.k"),
    ({"k": -3}, True, "query.k"),
    ({"k": "ten"}, True, "query.k"),
    ({"min_score": 2}, True, "query.min_score"),
    ({"min_score": "nan"}, True, "query.min_score"),
    ({}, False, "body.file"),
], ids=["k=0", "k=1e9", "k<0", "k=text", "min_score>1", "min_score=nan", "missing_file_field"])
def test_invalid_parameters_are_422_with_a_readable_detail(shared_client, params, files, loc):
    jpeg = encode(picture(), "JPEG")
    upload = {"file": ("q.jpg", jpeg, "image/jpeg")} if files else {"image": ("q.jpg", jpeg, "image/jpeg")}
    r = shared_client.post("/search", params=params, files=upload)
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith(f"invalid request: {loc}: ")
    assert [".".join(map(str, e["loc"])) for e in body["errors"]] == [loc]


def test_not_multipart_at_all(shared_client):
    r = shared_client.post("/search", json={"file": "aGVsbG8="})
    assert r.status_code == 422 and r.json()["detail"] == "invalid request: body.file: Field required"
    r = shared_client.post("/search", content=b"\x00" * 100, headers={"content-type": "multipart/form-data"})
    assert r.status_code in (400, 422) and isinstance(r.json()["detail"], str)


def test_refusals_are_counted_by_status(shared_client):
    shared_client.post("/search", files={"file": ("e.jpg", b"", "image/jpeg")})
    text = shared_client.get("/metrics").text
    assert 'npid_http_requests_total{method="POST",route="/search",status="422"}' in text
    assert 'route="/search",status="500"' not in text
