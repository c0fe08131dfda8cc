"""`npid worker` and `npid up`: the Celery worker, and the whole product on one machine.

`npid up FOLDER` needs nothing started beforehand: it uses the Redis at NPID_REDIS_URL or starts one, then
a worker and the API as child processes; with no published version yet it queues a first training job on
FOLDER, shows its progress, and prints the web page's URL once the version is live. Ctrl-C stops what it
started, and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis
from tqdm import tqdm

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def register(sub) -> None:
    w = sub.add_parser("worker", help="run the Celery worker that trains and indexes (settings: NPID_*)")
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=run_worker)

    u = sub.add_parser("up", help="run everything on this machine: Redis (if needed), worker, API, first job",
                       description="Serve FOLDER: start what is missing, train a first version if there is none.")
    u.add_argument("folder", type=Path, help="the image collection (a folder, read recursively)")
    u.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where index versions are kept")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.set_defaults(func=run_up)


def run_worker(args: argparse.Namespace) -> int:
    from .settings import SettingsError

    try:
        from .worker import main
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    main(args.loglevel)
    return 0


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_redis(url: str) -> subprocess.Popen:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not on this machine: start it or fix NPID_REDIS_URL")
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(f"no Redis answers at {url} and redis-server is not installed "
                         "(apt-get install redis-server, or point NPID_REDIS_URL at one)")
    proc = subprocess.Popen([server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        if _redis_answers(url):
            print(f"started redis-server on {host}:{port} (stopped again on exit)")
            return proc
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"redis-server did not come up on {host}:{port}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with code {proc.returncode} (see its log above)")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not answer on {url} within {timeout_s:.0f} s")


def _post_first_job(base: str, headers: dict, children: list[subprocess.Popen], timeout_s: float = 120):
    """POST /jobs/train, waiting (on 503 "no worker", Retry-After) for the worker just started to announce itself."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(base + "/jobs/train", headers=headers, timeout=10)
        if r.status_code != 503 or time.monotonic() > deadline or any(p.poll() is not None for p in children):
            return r
        time.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0))


def _follow_job(base: str, headers: dict, job_id: str, children: list[subprocess.Popen]) -> dict:
    """A progress bar over the job's epochs until it ends; returns the final job record."""
    bar = tqdm(total=1, desc="first version", dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| epoch {n:.1f}/{total} [{elapsed}<{remaining}{postfix}]")
    while True:
        if any(p.poll() is not None for p in children):
            bar.close()
            raise SystemExit("a child process exited while the first job was running (see its log above)")
        job = httpx.get(f"{base}/jobs/{job_id}", headers=headers, timeout=5).json()
        prog = job.get("progress") or {}
        if prog.get("epochs"):
            bar.total = prog["epochs"]
            bar.n = min(prog.get("epoch", 0) - 1 + prog.get("step", 0) / max(prog.get("steps", 1), 1), bar.total)
        bar.set_description(f"first version: {prog.get('phase', job['state'])}")
        bar.set_postfix({k: round(prog[k], 3) for k in ("loss", "images_per_s", "knn_top1") if prog.get(k)})
        bar.refresh()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            bar.n = bar.total if job["state"] == "succeeded" else bar.n
            bar.close()
            return job
        time.sleep(1)


def run_up(args: argparse.Namespace) -> int:
    from .pipeline import training_config
    from .settings import SettingsError, load_settings

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where a shell started us ignoring it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on `kill` too
    logging.getLogger("httpx").setLevel(logging.WARNING)
    folder = args.folder.resolve()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("NPID_REDIS_URL", DEFAULT_REDIS)
    env.setdefault("NPID_LOG_LEVEL", "WARNING")  # keep the terminal for the progress bar and the URL
    env["NPID_COLLECTION_ROOT"] = str(folder)
    env["NPID_ARTIFACTS_DIR"] = str(args.artifacts.resolve())
    if not env.get("NPID_API_KEY"):
        env["NPID_API_KEY"] = secrets.token_urlsafe(18)
        print(f"API key for this session (writes: POST /jobs/train, POST /images): {env['NPID_API_KEY']}")
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("NPID_")})
        settings = load_settings()
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    if not _port_free(args.host, args.port):
        print(f"port {args.port} on {args.host} is taken: choose another with --port", file=sys.stderr)
        return 2

    children: list[subprocess.Popen] = []
    try:
        if _redis_answers(settings.redis_url):
            print(f"using the Redis at {settings.masked()['redis_url']}")
        else:
            children.append(_start_redis(settings.redis_url))
        cli = [sys.executable, "-m", "service.cli"]
        children.append(subprocess.Popen([*cli, "worker", "--loglevel", "WARNING"], env=env, start_new_session=True))
        api = subprocess.Popen([*cli, "serve", "--host", args.host, "--port", str(args.port)], env=env,
                               start_new_session=True)
        children.append(api)
        base = f"http://{args.host}:{args.port}"
        _wait_healthy(base, api)
        headers = {"X-API-Key": env["NPID_API_KEY"]}
        if httpx.get(base + "/ready", timeout=5).status_code != 200:
            from trainer.data import scan_folder
            from trainer.distributed import local_device

            device = local_device(settings.train_device)
            cfg = training_config(settings, {}, len(scan_folder(folder)), device.type == "cuda")
            print(f"no version yet: training a first one on {folder} ({device}: {cfg.arch} width {cfg.width}, "
                  f"{cfg.epochs} epochs" + (f", a CPU budget of about {settings.cpu_train_minutes:g} min; with a "
                                            "GPU the paper's full recipe runs)" if device.type == "cpu" else ")"))
            r = _post_first_job(base, headers, children)
            if r.status_code == 409:
                job_id = r.json()["job_id"]
                print(f"a job is already running ({job_id}): following it")
            elif r.status_code != 202:
                raise SystemExit(f"could not start the first training job: {r.status_code} {r.text}")
            else:
                job_id = r.json()["job_id"]
            job = _follow_job(base, headers, job_id, children)
            if job["state"] != "succeeded":
                raise SystemExit(f"the first training job {job['state']}: {job.get('error')}")
            knn = (job.get("metrics") or {}).get("knn")
            if knn:
                print("kNN accuracy (" + job["metrics"].get("knn_protocol", "") + "): " +
                      ", ".join(f"{k} {v:.1f}%" for k, v in knn.items()))
            while httpx.get(base + "/ready", timeout=5).status_code != 200:
                time.sleep(0.5)
        ready = httpx.get(base + "/ready", timeout=5).json()
        print(f"\nnpid-search is live: version {ready['version']}, {ready['collection_size']} images\n"
              f"  web page:  {base}/\n  API docs:  {base}/docs\nCtrl-C stops everything started here.")
        while all(p.poll() is None for p in children):
            time.sleep(1)
        print("a child process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for p in reversed(children):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(children):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
