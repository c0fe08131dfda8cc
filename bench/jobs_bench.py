"""Background retraining benchmark: POST /jobs/train -> new version serving, split by phase, and /search latency
while a training job runs vs idle. Results: docs/jobs-benchmark.md.

    python bench/jobs_bench.py --collection data/cifar10-jpeg/train --minutes 4

Starts its own stack like `npid up` (worker + API as child processes, the Redis at --redis-url), over a
fresh artifacts directory, so nothing else is touched. The first job builds version 1 (timed), then /search
latency is sampled idle and during a second training job.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.trainer_bench import machine  # noqa: E402

KEY = "bench-key"


def start_stack(collection: Path, artifacts: Path, redis_url: str, minutes: float, port: int):
    env = {**os.environ, "NPID_COLLECTION_ROOT": str(collection), "NPID_ARTIFACTS_DIR": str(artifacts),
           "NPID_REDIS_URL": redis_url, "NPID_API_KEY": KEY, "NPID_CPU_TRAIN_MINUTES": str(minutes),
           "NPID_LOG_LEVEL": "WARNING", "NPID_RATE_LIMIT_PER_MINUTE": "0"}
    cli = [sys.executable, "-m", "service.cli"]
    procs = [subprocess.Popen([*cli, "worker", "--loglevel", "WARNING"], env=env, start_new_session=True),
             subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, start_new_session=True)]
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return procs, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("API did not start")


def run_job(base: str, body: dict) -> tuple[dict, dict[str, float]]:
    """POST /jobs/train, poll every 0.25 s; -> (final job, seconds spent per phase incl. 'queued' and 'swap')."""
    t0 = time.monotonic()
    for _ in range(120):  # the worker may still be starting: the API answers 503 until one is there
        r = httpx.post(base + "/jobs/train", json=body, headers={"X-API-Key": KEY}, timeout=10)
        if r.status_code != 503:
            break
        time.sleep(0.5)
    if r.status_code != 202:
        raise SystemExit(f"POST /jobs/train: {r.status_code} {r.text}")
    job_id = r.json()["job_id"]
    phases: dict[str, float] = {}
    last, last_t = "queued", t0
    while True:
        job = httpx.get(f"{base}/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=10).json()  # with train_config
        phase = job["progress"].get("phase", job["state"]) if job["state"] == "running" else job["state"]
        now = time.monotonic()
        if phase != last:
            phases[last] = phases.get(last, 0.0) + now - last_t
            last, last_t = phase, now
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.25)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job['state']}: {job['error']}")
    while httpx.get(base + "/ready", timeout=5).json().get("version") != job["version"]:
        time.sleep(0.05)
    phases["swap (published -> serving)"] = time.monotonic() - last_t
    phases["total"] = time.monotonic() - t0
    return job, phases


def search_latencies(base: str, image: bytes, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t = time.perf_counter()
            r = client.post(base + "/search", files={"file": ("q.jpg", image, "image/jpeg")}, params={"k": 10})
            out.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", type=Path, default=ROOT / "data/cifar10-jpeg/train")
    p.add_argument("--minutes", type=float, default=4.0, help="NPID_CPU_TRAIN_MINUTES")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    p.add_argument("--port", type=int, default=8311)
    p.add_argument("--queries", type=int, default=100)
    args = p.parse_args()
    artifacts = Path(tempfile.mkdtemp(prefix="npid-bench-"))
    procs, base = start_stack(args.collection.resolve(), artifacts, args.redis_url, args.minutes, args.port)
    try:
        job, phases = run_job(base, {})
        query = next(args.collection.rglob("*.jpg")).read_bytes()
        Image.open(io.BytesIO(query)).verify()
        idle = search_latencies(base, query, args.queries)
        second = httpx.post(base + "/jobs/train", json={"epochs": 50}, headers={"X-API-Key": KEY}, timeout=10)
        job_id = second.json()["job_id"]
        while httpx.get(f"{base}/jobs/{job_id}", timeout=10).json()["progress"].get("phase") != "training":
            time.sleep(0.2)
        busy = search_latencies(base, query, args.queries)
        httpx.delete(f"{base}/jobs/{job_id}", headers={"X-API-Key": KEY}, timeout=10)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(60)

    def q(xs, f):
        return statistics.quantiles(xs, n=100)[f - 1] * 1e3

    cfg = job["metrics"]["train_config"]
    lines = [f"### POST /jobs/train -> new version serving\n\nMachine: {machine()}  \n"
             f"Command: `python {' '.join(sys.argv)}`  \n"
             f"Collection: {job['metrics']['images']} images; recipe chosen for the CPU budget: {cfg['arch']} width "
             f"{cfg['width']}, {cfg['epochs']} epoch(s), {cfg['objective']}, batch {cfg['batch_size']}; "
             f"kNN top-1 (leave-one-out) {job['metrics']['knn']['top1@200']:.1f}%\n",
             "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in phases.items()]
    lines += ["", "### /search latency (k=10, one client, sequential)", "",
              "| condition | p50 ms | p95 ms | p99 ms |", "| --- | --- | --- | --- |",
              f"| idle | {q(idle, 50):.1f} | {q(idle, 95):.1f} | {q(idle, 99):.1f} |",
              f"| during a training job | {q(busy, 50):.1f} | {q(busy, 95):.1f} | {q(busy, 99):.1f} |",
              "", f"p50 ratio busy/idle: {q(busy, 50) / q(idle, 50):.2f}x"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
