"""The folder watcher under a drop: how soon a copied photo is found, and 10,000 files copied into the folder at
once, embedded in batches with progress while searches keep answering. Results: docs/watch-benchmark.md.

    python bench/watch_bench.py --work /tmp/watchbench --drop 10000

A version is trained (one epoch, a small network: the watcher embeds with whatever model is live) on a generated
collection of --base 32 px images and published; then the real processes run: a private redis-server, the API
under uvicorn, `npid watch`, all with their default settings (debounce 1 s, batches of 256). Measured:
1. single copies: --singles files copied one at a time into the folder; for each, the seconds from the copy to
   the first POST /search whose best hit is that file (polled every 0.2 s);
2. the drop: --drop generated files copied into a new sub-folder as fast as the disk takes them; the seconds
   until GET /ready counts them all, the watcher's progress (GET /ready's `watch`) sampled every second, and the
   latency of the POST /search requests a client sends meanwhile (one at a time, back to back).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import ports  # noqa: E402
import synthetic  # noqa: E402
from processes import RedisServer  # noqa: E402
from trainer_bench import machine  # noqa: E402

from index import ArtifactStore  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.train import train  # noqa: E402


def png(seed: int) -> bytes:
    """A distinct 32 px picture (noise with a seeded pattern)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(synthetic.pattern(synthetic.CLASSES[seed % len(synthetic.CLASSES)], 32, rng)).save(buf, "PNG")
    return buf.getvalue()


def search(url: str, data: bytes) -> tuple[dict, float]:
    t = time.perf_counter()
    r = httpx.post(f"{url}/search", params={"k": 1}, files={"file": ("q.png", data, "image/png")}, timeout=60)
    r.raise_for_status()
    return r.json()["results"][0], time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/watchbench"))
    p.add_argument("--base", type=int, default=200, help="images of the first version")
    p.add_argument("--drop", type=int, default=10_000)
    p.add_argument("--singles", type=int, default=5)
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    folder, store = args.work / "images", args.work / "artifacts"
    synthetic.make_folder(folder, per_class=args.base // len(synthetic.CLASSES), size=32)
    cfg = TrainConfig(data=str(folder), image_size=32, arch="airnet", width=8, dim=32, epochs=1, batch_size=32,
                      objective="softmax", temperature=0.1, out=str(args.work / "run"), progress=False, knn_every=0,
                      knn_k=(5,), cache_dir=str(args.work / "cache"))
    train(cfg)
    ArtifactStore(store).build(args.work / "run" / "export", collection_root=folder)
    staging = args.work / "staging"
    staging.mkdir()
    for i in range(args.drop):
        (staging / f"{i:05d}.png").write_bytes(png(1000 + i))

    redis = RedisServer(args.work)
    redis.start()
    port = ports.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPID_")}
    env.update(PYTHONPATH=str(ROOT), NPID_COLLECTION_ROOT=str(folder), NPID_ARTIFACTS_DIR=str(store),
               NPID_REDIS_URL=redis.url, NPID_RATE_LIMIT_PER_MINUTE="0", NPID_LOG_LEVEL="WARNING")
    procs = [subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port",
                               str(port), "--log-level", "warning"], env=env, start_new_session=True),
             subprocess.Popen([sys.executable, "-m", "service.cli", "watch"], env=env, start_new_session=True)]
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                ready = httpx.get(f"{url}/ready", timeout=5).json()
                if (ready.get("watch") or {}).get("scans", 0) >= 1:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        singles = []
        (folder / "singles").mkdir()
        for i in range(args.singles):
            data, path = png(500 + i), f"singles/{i}.png"
            t = time.perf_counter()
            (folder / path).write_bytes(data)
            while search(url, data)[0]["path"] != path:
                time.sleep(0.2)
            singles.append(time.perf_counter() - t)

        latencies, samples, stop = [], [], threading.Event()

        def client() -> None:
            query = png(7)
            while not stop.is_set():
                latencies.append(search(url, query)[1])

        before = httpx.get(f"{url}/ready").json()["collection_size"]
        threading.Thread(target=client, daemon=True).start()
        t0 = time.perf_counter()
        shutil.copytree(staging, folder / "dropped")
        copied = time.perf_counter() - t0
        while True:
            ready = httpx.get(f"{url}/ready", timeout=30).json()
            samples.append((time.perf_counter() - t0, ready["collection_size"] - before, ready["watch"]))
            if ready["collection_size"] - before >= args.drop:
                break
            time.sleep(1)
        all_in = time.perf_counter() - t0
        stop.set()
        current = ArtifactStore(store).current_version()
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        redis.stop()
    lat = sorted(latencies)
    print(f"# The folder watcher under a drop\n\nMachine: {machine()}. Command: `python bench/watch_bench.py --work "
          f"{args.work} --drop {args.drop}` (default watcher settings; {before} images before the drop).\n")
    print(f"**A copied photo**: found by POST /search {statistics.median(singles):.1f} s (median of {len(singles)}; "
          f"max {max(singles):.1f} s) after its copy into the folder (the goal: 10 s).\n")
    print(f"**{args.drop:,} files copied at once** (the copy itself took {copied:.1f} s): all searchable "
          f"{all_in:.0f} s after the copy began ({args.drop / all_in:.0f} files/s); the current version was then "
          f"{current} (one version per batch of adds, compactions in the background, the store keeping the newest "
          f"few). {len(lat)} searches answered meanwhile: "
          f"median {1000 * statistics.median(lat):.0f} ms, p95 {1000 * lat[int(0.95 * (len(lat) - 1))]:.0f} ms, "
          f"max {1000 * lat[-1]:.0f} ms.\n")
    print("| seconds after the copy began | images added so far | watcher state | pending | done |\n"
          "| --- | --- | --- | --- | --- |")
    for t, added, watch in samples[:: max(1, len(samples) // 12)] + samples[-1:]:
        print(f"| {t:.0f} | {added} | {watch['state']} | {watch['pending']} | {watch['done']} |")


if __name__ == "__main__":
    main()
