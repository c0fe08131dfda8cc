"""Bounded decoding under abuse: 20 concurrent 40-megapixel uploads to POST /search, the API's memory and /health.

A uvicorn process (`--factory service.api.app:create_app`, default decode settings: NPID_DECODE_THREADS=2,
NPID_DECODE_PIXEL_BUDGET=40,000,000) serves a small generated collection (bench/service_bench.py's deployment).
The client sends 20 uploads at once of a 6300x6300 image (39.7 MP, the default NPID_MAX_PIXELS allows 40 MP),
once as PNG (no reduced decode exists: each decode holds the whole pixel budget, so they run one at a time) and
once as JPEG (draft mode decodes at 1/8 scale), while /health is asked every 50 ms and the server's resident
memory (VmRSS) is sampled every 20 ms; VmHWM gives the peak.

    python bench/decode_bench.py [--out docs/decode-benchmark.md]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service_bench  # noqa: E402  (its deployment, server start and provenance helpers)

SIDE = 6300  # px: 39.7 MP
UPLOADS = 20
RSS_BOUND_MB = 1536
HEALTH_BOUND_MS = 100


def big_image(fmt: str) -> bytes:
    """A smooth 6300x6300 picture (small file, full pixel count)."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                    np.broadcast_to(ramp, (SIDE, SIDE))], axis=-1).astype(np.uint8)  # SIDE x SIDE x 3
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} for {pid}")


async def quiet(base: str, seconds: float = 5.0) -> list[float]:
    """/health latencies with nothing else asked of the server: what this host gives at the moment."""
    out = []
    async with httpx.AsyncClient(timeout=10) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            assert (await client.get(base + "/health")).status_code == 200
            out.append((time.perf_counter() - t) * 1000.0)
            await asyncio.sleep(0.05)
    return out


async def round_of(base: str, pid: int, data: bytes, fmt: str) -> dict:
    done = asyncio.Event()
    health_ms: list[float] = []
    rss: list[float] = []

    async def probe(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            t = time.perf_counter()
            r = await client.get(base + "/health")
            assert r.status_code == 200
            health_ms.append((time.perf_counter() - t) * 1000.0)
            await asyncio.sleep(0.05)

    async def sample() -> None:
        while not done.is_set():
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.02)

    async def upload(client: httpx.AsyncClient) -> int:
        r = await client.post(base + "/search", files={"file": (f"big.{fmt.lower()}", data)}, params={"k": 5})
        return r.status_code

    limits = httpx.Limits(max_connections=UPLOADS + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client, \
            httpx.AsyncClient(timeout=10) as prober:
        tasks = [asyncio.create_task(probe(prober)), asyncio.create_task(sample())]
        start = time.perf_counter()
        statuses = await asyncio.gather(*(upload(client) for _ in range(UPLOADS)))
        wall = time.perf_counter() - start
        done.set()
        await asyncio.gather(*tasks)
    return {"format": fmt, "file_kib": len(data) / 1024, "statuses": sorted(set(statuses)), "wall_s": wall,
            "rss_max_mb": max(rss), **latency(health_ms)}


def latency(ms: list[float]) -> dict:
    return {"health_max_ms": max(ms), "health_p99_ms": float(np.percentile(ms, 99)),
            "health_p50_ms": float(np.median(ms)), "health_n": len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        collection, store = service_bench.build_deployment(Path(tmp), 200, 16, 128)
        port = service_bench.free_port()
        server = service_bench.start_server(collection, store, port, 1, 2)
        try:
            base = f"http://127.0.0.1:{port}"
            idle = rss_mb(server.pid)
            baseline = latency(asyncio.run(quiet(base)))
            rows = [asyncio.run(round_of(base, server.pid, big_image(fmt), fmt)) for fmt in ("PNG", "JPEG")]
            peak = rss_mb(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(30)
    lines = [
        "# Bounded decoding: 20 concurrent 40-MP uploads",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {service_bench.cpu_name()}, shared with other work",
        f"- versions: {service_bench.versions()}",
        "- command: `python bench/decode_bench.py --out docs/decode-benchmark.md`",
        "- server: uvicorn, default decode settings (NPID_DECODE_THREADS=2, NPID_DECODE_PIXEL_BUDGET=40000000), "
        "200-image collection, ResNet-18 width 16 at random init",
        f"- bounds: server RSS <= {RSS_BOUND_MB} MiB, /health <= {HEALTH_BOUND_MS} ms",
        "",
        f"API RSS idle (version loaded): {idle:.0f} MiB; peak over both rounds (VmHWM): {peak:.0f} MiB",
        "",
        "| upload (6300x6300) | file KiB | statuses | wall s | RSS max MiB | /health max ms | p99 ms | p50 ms "
        "| probes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| none (baseline, 5 s) | | | | {idle:.0f} | {baseline['health_max_ms']:.1f} | "
        f"{baseline['health_p99_ms']:.1f} | {baseline['health_p50_ms']:.1f} | {baseline['health_n']} |",
    ]
    for r in rows:
        lines.append(f"| {r['format']} x {UPLOADS} at once | {r['file_kib']:.0f} | {r['statuses']} "
                     f"| {r['wall_s']:.1f} | {r['rss_max_mb']:.0f} | {r['health_max_ms']:.1f} "
                     f"| {r['health_p99_ms']:.1f} | {r['health_p50_ms']:.1f} | {r['health_n']} |")
    ok = peak <= RSS_BOUND_MB and all(r["health_max_ms"] <= HEALTH_BOUND_MS for r in rows)
    lines += ["", f"Within the bounds (peak RSS, every /health answer): {'yes' if ok else 'NO'}; "
              f"host load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
              f"{os.cpu_count()} CPUs"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
