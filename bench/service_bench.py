"""Service benchmark: POST /search latency and throughput under uvicorn, next to the in-process floor.

The floor is the same work without HTTP: `uploads.decode_upload` + `LiveVersion.query` (embed + search)
called in a loop in this process, on the version the server loads. The server is a separate uvicorn
process (`--factory service.api.app:create_app`, access log off, rate limit off); the client is a minimal
keep-alive HTTP/1.1 client on asyncio streams (pre-encoded request, Content-Length response), so that
it takes as little as possible of the CPU it shares with the server.

Recorded run (docs/service-benchmark.md):
    hardware  Intel Xeon (Sapphire Rapids, KVM guest), 2 vCPUs, 23 GiB RAM, no GPU, shared with other work
    command   python bench/service_bench.py --out docs/service-benchmark.md     (about 2 minutes)
    runs      concurrency 1 and the floor alternate in 10 blocks of 30 (same machine load for both);
              then, after 30 warm-up requests each, 600 requests at concurrency 4 and 1,200 at 16

Setup (unless --collection/--store name an existing deployment): 2,000 generated 32x32 PNG images
(tests/synthetic.py shapes), the paper's encoder (ResNet-18, CIFAR stem, 128-d) at random init, exported
by trainer.embed.write_export and indexed by index.ArtifactStore.build (exact search). The query is a
256x256 JPEG (decoded, resized to 32x32 by the model's own preprocessing).

    python bench/service_bench.py [--images 2000] [--width 64] [--query-size 256] [--out docs/service-benchmark.md]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from index import ArtifactStore
from service.api.decoding import PixelBudget
from service.api.uploads import decode_upload
from service.live.engine import Engine
from service.settings import Settings
from trainer.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolder
from trainer.embed import embed_dataset, model_config, write_export
from trainer.model import build_encoder
from trainer.preprocess import Preprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import synthetic  # noqa: E402  (the test-suite's generated collections)

LEVELS = {1: 300, 4: 600, 16: 1200}  # concurrency -> measured requests
WARMUP = 30
ROUNDS = 10  # concurrency 1 and the floor alternate in blocks, so both see the same machine load
K = 10
GOAL_RATIO = 1.3  # p50 at concurrency 1 over the floor's p50
BOUNDARY = "npidbenchboundary"


@dataclass
class Level:
    concurrency: int
    latencies_ms: list[float]
    errors: int
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def build_deployment(work: Path, images: int, width: int, dim: int) -> tuple[Path, Path]:
    """A generated collection and an index store with one version of a random-init paper encoder."""
    collection = synthetic.make_folder(work / "images", per_class=images // len(synthetic.CLASSES), size=32)
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", dim, 32, width).eval()
    pre = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)
    ds = ImageFolder(collection)
    with torch.no_grad():
        vectors = embed_dataset(encoder, ds, pre, "cpu", progress=False).numpy()
    export = write_export(work / "export", vectors, ds, encoder, model_config("resnet18", dim, 32, width), pre,
                          {"note": "service benchmark, random init"})
    store = work / "store"
    store.mkdir()
    ArtifactStore(store).build(export, collection_root=collection)
    return collection, store


def make_query(size: int) -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(synthetic.pattern("checker", size, rng))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def floor_calls(live, query: bytes, n: int) -> list[float]:
    """decode + embed + search in this process, through the service's own code: n latencies, ms."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        image = decode_upload(PixelBudget(40_000_000), query, 40_000_000).image
        neighbours, _ = live.query(image, K, None)
        out.append((time.perf_counter() - start) * 1000.0)
        assert len(neighbours) == K
    return out


def request_bytes(query: bytes, port: int) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + query + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /search?k={K} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def one_connection(port: int, request: bytes, count: int, latencies: list[float], errors: list[str]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = dict(ln.partition(":")[::2] for ln in lines[1:] if ln)
            length = int(next(v for k, v in fields.items() if k.lower() == "content-length"))
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000.0)
            if status != 200 or json.loads(body)["k_returned"] != K:
                errors.append(f"{status}: {body[:200]!r}")
    finally:
        writer.close()


async def run_level(port: int, request: bytes, concurrency: int, total: int, warmup: int = WARMUP) -> Level:
    await one_connection(port, request, warmup, [], [])
    latencies: list[float] = []
    errors: list[str] = []
    per = total // concurrency
    start = time.perf_counter()
    await asyncio.gather(*(one_connection(port, request, per, latencies, errors) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    if errors:
        print(f"  {len(errors)} errors at concurrency {concurrency}, first: {errors[0]}", file=sys.stderr)
    return Level(concurrency, latencies, len(errors), wall)


def interleaved(live, port: int, request: bytes, query: bytes, total: int) -> tuple[list[float], Level]:
    """The floor and concurrency 1, alternating in ROUNDS blocks: (floor latencies, server level)."""
    floor: list[float] = []
    blocks: list[Level] = []
    for _ in range(ROUNDS):
        floor += floor_calls(live, query, total // ROUNDS)
        blocks.append(asyncio.run(run_level(port, request, 1, total // ROUNDS, warmup=2)))
    merged = Level(1, [ms for b in blocks for ms in b.latencies_ms], sum(b.errors for b in blocks),
                   sum(b.wall_s for b in blocks))
    return floor, merged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(collection: Path, store: Path, port: int, torch_threads: int, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "NPID_COLLECTION_ROOT": str(collection), "NPID_ARTIFACTS_DIR": str(store),
           "NPID_RATE_LIMIT_PER_MINUTE": "0", "NPID_LOG_LEVEL": "WARNING", "NPID_TORCH_THREADS": str(torch_threads),
           "NPID_INFERENCE_CONCURRENCY": str(concurrency)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not become ready")


def versions() -> str:
    names = ("torch", "faiss-cpu", "fastapi", "starlette", "uvicorn", "pillow")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def report(floor: list[float], levels: list[Level], setup: str, command: str, load: str,
           inference_concurrency: int) -> str:
    f50 = statistics.median(floor)
    rows = [f"| in-process floor (decode + embed + search) | - | {f50:.2f} | {pct(floor, 95):.2f} | "
            f"{pct(floor, 99):.2f} | {1000.0 / statistics.mean(floor):.0f} | - | 1.00 |"]
    for lv in levels:
        p50 = statistics.median(lv.latencies_ms)
        rows.append(f"| uvicorn POST /search | {lv.concurrency} | {p50:.2f} | {pct(lv.latencies_ms, 95):.2f} | "
                    f"{pct(lv.latencies_ms, 99):.2f} | {lv.throughput:.0f} | {lv.errors} | {p50 / f50:.2f} |")
    c1 = next(lv for lv in levels if lv.concurrency == 1)
    ratio = statistics.median(c1.latencies_ms) / f50
    c16 = next((lv for lv in levels if lv.concurrency == 16), None)
    goals = [f"- p50 at concurrency 1 is {ratio:.2f}x the floor (goal <= {GOAL_RATIO}x): "
             f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}"]
    if c16 is not None:
        goals.append(f"- errors at concurrency 16: {c16.errors} (goal 0): {'met' if c16.errors == 0 else 'NOT met'}")
    return "\n".join([
        "| what | concurrency | p50 ms | p95 ms | p99 ms | requests/s | errors | p50 / floor p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows, "", *goals, "",
        f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"inference concurrency {inference_concurrency}, "
        f"load average {load}",
        f"- versions: {versions()}",
        f"- setup: {setup}",
        f"- command: `{command}`",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", type=Path, help="existing collection root (with --store)")
    p.add_argument("--store", type=Path, help="existing index store (with --collection)")
    p.add_argument("--images", type=int, default=2000, help="generated collection size")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage channels (64 = the paper's)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--query-size", type=int, default=256, help="side of the JPEG query, px")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels (1 always runs)")
    defaults = Settings.model_fields
    p.add_argument("--torch-threads", type=int, default=defaults["torch_threads"].default,
                   help="intra-op threads, for the floor and the server (NPID_TORCH_THREADS; default: the service's)")
    p.add_argument("--inference-concurrency", type=int,
                   default=defaults["inference_concurrency"].default_factory(),
                   help="NPID_INFERENCE_CONCURRENCY (default: the service's)")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args(argv)
    command = "python bench/service_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="npid-service-bench-") as tmp:
        if args.store and args.collection:
            collection, store = args.collection, args.store
            setup = f"existing deployment: {collection} / {store}"
        else:
            print(f"building a {args.images}-image deployment (ResNet-18 width {args.width}, {args.dim}-d)...")
            collection, store = build_deployment(Path(tmp), args.images, args.width, args.dim)
            setup = (f"{args.images} generated 32x32 PNGs, ResNet-18 (CIFAR stem, width {args.width}, "
                     f"{args.dim}-d, random init), exact index; query a {args.query_size}x{args.query_size} "
                     f"JPEG, k={K}")
        query = make_query(args.query_size)
        torch.set_num_threads(args.torch_threads)
        engine = Engine(store, "cpu")
        engine.check_for_new_version()
        live = engine.live
        floor_calls(live, query, WARMUP)
        port = free_port()
        server = start_server(collection, store, port, args.torch_threads, args.inference_concurrency)
        load_before = os.getloadavg()[0]
        try:
            request = bytes(request_bytes(query, port))
            print("concurrency 1, alternating with the in-process floor...")
            floor, c1 = interleaved(live, port, request, query, LEVELS[1])
            levels = [c1]
            for c in (c for c in args.levels if c != 1):
                print(f"concurrency {c}...")
                levels.append(asyncio.run(run_level(port, request, c, LEVELS.get(c, 50 * c))))
        finally:
            server.terminate()
            server.wait(timeout=30)
        load = f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (1-minute)"
    table = report(floor, levels, setup, command, load, args.inference_concurrency)
    print(table)
    if args.out:
        text = args.out.read_text() if args.out.exists() else ""
        marker = "<!-- results -->"
        head = text.split(marker)[0] if marker in text else "# Service benchmark\n\n"
        args.out.write_text(head + marker + "\n" + table + "\n")
    return 0 if all(lv.errors == 0 for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
