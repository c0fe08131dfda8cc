"""`npid up`: the whole product on one machine.

`npid up FOLDER` needs nothing started beforehand: it uses the Redis at NPID_REDIS_URL or starts one, then
a worker, the API and the folder watcher (`npid watch`, unless NPID_WATCH=0) as child processes; with no
published version yet it queues a first training job on FOLDER, shows its progress, and prints the web page's
URL once the version is live. It keeps the children running (service/launch/supervise.py): one that dies is
restarted with a backoff while the others go on serving, and the terminal says so. Their own output (Celery's
banner, access logs) goes to log files under --logs, not to the terminal. Ctrl-C stops what it started, and
nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tqdm import tqdm

from .progress import follow_job
from .redis_server import redis_answers, redis_child, wait_redis
from .supervise import Child, last_line

if TYPE_CHECKING:
    from ..settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def register(sub) -> None:
    u = sub.add_parser("up", help="run everything on this machine: Redis (if needed), worker, API, watcher, first job",
                       description="Serve FOLDER: start what is missing, train a first version if there is none.")
    u.add_argument("folder", type=Path, help="the image collection (a folder, read recursively)")
    u.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where index versions are kept")
    u.add_argument("--logs", type=Path, default=Path("logs"), help="where the worker's, API's and Redis's output goes")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.set_defaults(func=run_up)


def _say(line: str) -> None:
    """npid up's own terminal lines, above the progress bar when one is shown."""
    tqdm.write(line)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _wait_healthy(url: str, api: Child, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not api.running():
            raise SystemExit(f"the API exited with code {api.proc.returncode}: {last_line(api.log_path)} "
                             f"(log: {api.log_path})")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not answer on {url} within {timeout_s:.0f} s (log: {api.log_path})")


def run_up(args: argparse.Namespace) -> int:
    from ..settings import load_settings
    from .improve import keep_improving

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where a shell started us ignoring it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on `kill` too
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))  # and when the terminal closes (the children, in
    # sessions of their own, would not see that hangup and outlive us)
    logging.getLogger().setLevel(logging.WARNING)  # the terminal gets our own lines; the children log to files
    folder = args.folder.resolve()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    logs = args.logs.resolve()
    env = dict(os.environ)
    env.setdefault("NPID_REDIS_URL", DEFAULT_REDIS)
    env.setdefault("NPID_LOG_LEVEL", "WARNING")  # the log files get warnings and errors; the terminal neither
    env["NPID_COLLECTION_ROOT"] = str(folder)
    env["NPID_ARTIFACTS_DIR"] = str(args.artifacts.resolve())
    if not env.get("NPID_API_KEY"):
        env["NPID_API_KEY"] = secrets.token_urlsafe(18)
        print(f"API key for this session (writes: POST /jobs/train, POST /images): {env['NPID_API_KEY']}")
    os.environ.update({k: v for k, v in env.items() if k.startswith("NPID_")})
    settings = load_settings()  # a SettingsError: service/cli.py says it
    if not _port_free(args.host, args.port):
        print(f"port {args.port} on {args.host} is taken: choose another with --port", file=sys.stderr)
        return 2

    cli = [sys.executable, "-m", "service.cli"]
    worker = Child("worker", [*cli, "worker", "--loglevel", "WARNING"], env, logs / "worker.log", _say)
    api = Child("api", [*cli, "serve", "--host", args.host, "--port", str(args.port)], env, logs / "api.log", _say)
    watcher = Child("watcher", [*cli, "watch"], env, logs / "watcher.log", _say)  # service/watch/: one, like this
    children: list[Child] = []
    try:
        if redis_answers(settings.redis_url):
            print(f"using the Redis at {settings.masked()['redis_url']}")
        else:
            redis_server = redis_child(settings.redis_url, env, logs, _say)
            redis_server.start()
            children.append(redis_server)
            wait_redis(settings.redis_url, redis_server)
            print(f"started redis-server at {settings.masked()['redis_url']} (stopped again on exit)")
        for child in (worker, api):
            child.start()
            children.append(child)
        print(f"started the worker (pid {worker.pid}) and the API (pid {api.pid}); their output goes to {logs}/")
        if settings.watch:  # after the API: the first version's job comes first, the watcher waits for a version
            watcher.start()
            children.append(watcher)
            print(f"watching {folder} for added, changed and removed images (pid {watcher.pid}; NPID_WATCH=0 "
                  f"turns this off)")
        base = f"http://{args.host}:{args.port}"
        _wait_healthy(base, api)
        headers = {"X-API-Key": env["NPID_API_KEY"]}
        first_job = None
        if httpx.get(base + "/ready", timeout=5).status_code != 200:
            job_id = _start_first_job(settings, folder, base, headers)
            job = first_job = follow_job(base, headers, job_id, children)
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
              f"  web page:  {base}/\n  API docs:  {base}/docs\n"
              f"A process that dies is restarted. Ctrl-C stops everything started here.")

        def supervise() -> bool:  # the background trainer's poll keeps the children supervised too
            for child in children:
                child.tick()
            return True

        if first_job is not None and settings.keep_training:  # service/launch/improve.py
            keep_improving(base, headers, first_job, supervise)
        while supervise():
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for child in reversed(children):
            child.stop()


def _post_first_job(base: str, headers: dict, timeout_s: float = 120) -> httpx.Response:
    """POST /jobs/train, waiting (on 503 "no worker", Retry-After) for the worker just started to announce itself."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(base + "/jobs/train", headers=headers, timeout=10)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0))


def _start_first_job(settings: Settings, folder: Path, base: str, headers: dict) -> str:
    """Queue the first training job on FOLDER (or follow the one already queued); its id."""
    from trainer import recipe
    from trainer.distributed import local_device

    from ..jobs.pipeline import file_defaults

    try:
        collection = recipe.collection_of(str(folder))
    except ValueError as e:  # an empty folder: say so, not a traceback
        raise SystemExit(f"nothing to train on: {e}") from None
    device = local_device(settings.train_device)
    cfg = recipe.decide(file_defaults(settings), collection, device.type == "cuda", "machine",
                        settings.cpu_train_minutes)  # the job's recipe, decided as the job will
    length = f"for {cfg.minutes:g} min" if cfg.minutes else f"{cfg.epochs} epochs"
    print(f"no version yet: training a first one on {folder} ({collection.images} images; {device}: {cfg.arch} "
          f"width {cfg.width} at {cfg.image_size} px, {cfg.objective}, {length})")
    r = _post_first_job(base, headers)
    if r.status_code == 409:
        print(f"a job is already running ({r.json()['job_id']}): following it")
    elif r.status_code != 202:
        raise SystemExit(f"could not start the first training job: {r.status_code} {r.text}")
    return r.json()["job_id"]
