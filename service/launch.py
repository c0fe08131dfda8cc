"""`npid worker` and `npid up`: the Celery worker, and the whole product on one machine.

`npid up FOLDER` needs nothing started beforehand: it uses the Redis at NPID_REDIS_URL or starts one, then
a worker and the API as child processes; with no published version yet it queues a first training job on
FOLDER, shows its progress, and prints the web page's URL once the version is live. It keeps the children
running (service/supervise.py): one that dies is restarted with a backoff while the others go on serving, and
the terminal says so. Their own output (Celery's banner, access logs) goes to log files under --logs, not to
the terminal. Ctrl-C stops what it started, and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import redis
from tqdm import tqdm

from .supervise import Child, last_line

if TYPE_CHECKING:
    from .settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def register(sub) -> None:
    w = sub.add_parser("worker", help="run the Celery worker that trains and indexes (settings: NPID_*)")
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=run_worker)

    u = sub.add_parser("up", help="run everything on this machine: Redis (if needed), worker, API, first job",
                       description="Serve FOLDER: start what is missing, train a first version if there is none.")
    u.add_argument("folder", type=Path, help="the image collection (a folder, read recursively)")
    u.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where index versions are kept")
    u.add_argument("--logs", type=Path, default=Path("logs"), help="where the worker's, API's and Redis's output goes")
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


def _redis_child(url: str, env: dict[str, str], logs: Path) -> Child:
    """A redis-server for a local NPID_REDIS_URL that answers nothing (not started yet)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not on this machine: start it or fix NPID_REDIS_URL")
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(f"no Redis answers at {url} and redis-server is not installed "
                         "(apt-get install redis-server, or point NPID_REDIS_URL at one)")
    argv = [server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"]
    return Child("redis-server", argv, env, logs / "redis.log", _say)


def _wait_redis(url: str, redis_server: Child) -> None:
    for _ in range(100):
        if _redis_answers(url):
            return
        if not redis_server.running():
            break
        time.sleep(0.1)
    raise SystemExit(f"redis-server did not come up at {url} (see {redis_server.log_path})")


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


def epochs_done(progress: dict) -> float:
    """How many epochs of the job are done, for the progress bar: 0 until training starts (epoch is 1-based
    and 0 while loading), never more than the job's epochs, all of them once training is over."""
    epochs, epoch = progress.get("epochs") or 0, progress.get("epoch") or 0
    if progress.get("phase") not in (None, "loading", "training"):  # measuring, embedding, indexing, ...
        return float(epochs)
    if not epochs or epoch < 1:
        return 0.0
    within = (progress.get("step") or 0) / max(progress.get("steps") or 1, 1)
    return min(max(epoch - 1 + within, 0.0), float(epochs))


def _follow_job(base: str, headers: dict, job_id: str, children: list[Child]) -> dict:
    """A progress bar over the job's epochs until it ends (children kept alive meanwhile); the final record."""
    bar = tqdm(total=1, desc="first version", dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| epoch {n:.1f}/{total} [{elapsed}<{remaining}{postfix}]")
    while True:
        for child in children:
            child.tick()
        try:
            job = httpx.get(f"{base}/jobs/{job_id}", headers=headers, timeout=5).json()
        except httpx.HTTPError:  # the API is being restarted: the supervisor has said so
            time.sleep(1)
            continue
        prog = job.get("progress") or {}
        if prog.get("epochs"):
            bar.total = prog["epochs"]
            bar.n = epochs_done(prog)
        bar.set_description_str(f"first version: {prog.get('phase', job['state'])}")
        bar.set_postfix({k: round(prog[k], 3) for k in ("loss", "images_per_s", "knn_top1") if prog.get(k)})
        bar.refresh()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            bar.n = bar.total if job["state"] == "succeeded" else bar.n
            bar.close()
            return job
        time.sleep(1)


def run_up(args: argparse.Namespace) -> int:
    from .improve import keep_improving
    from .settings import SettingsError, load_settings

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
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("NPID_")})
        settings = load_settings()
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    if not _port_free(args.host, args.port):
        print(f"port {args.port} on {args.host} is taken: choose another with --port", file=sys.stderr)
        return 2

    cli = [sys.executable, "-m", "service.cli"]
    worker = Child("worker", [*cli, "worker", "--loglevel", "WARNING"], env, logs / "worker.log", _say)
    api = Child("api", [*cli, "serve", "--host", args.host, "--port", str(args.port)], env, logs / "api.log", _say)
    children: list[Child] = []
    try:
        if _redis_answers(settings.redis_url):
            print(f"using the Redis at {settings.masked()['redis_url']}")
        else:
            redis_server = _redis_child(settings.redis_url, env, logs)
            redis_server.start()
            children.append(redis_server)
            _wait_redis(settings.redis_url, redis_server)
            print(f"started redis-server at {settings.masked()['redis_url']} (stopped again on exit)")
        for child in (worker, api):
            child.start()
            children.append(child)
        print(f"started the worker (pid {worker.pid}) and the API (pid {api.pid}); their output goes to {logs}/")
        base = f"http://{args.host}:{args.port}"
        _wait_healthy(base, api)
        headers = {"X-API-Key": env["NPID_API_KEY"]}
        first_job = None
        if httpx.get(base + "/ready", timeout=5).status_code != 200:
            job_id = _start_first_job(settings, folder, base, headers)
            job = first_job = _follow_job(base, headers, job_id, children)
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

        if first_job is not None and settings.keep_training:  # service/improve.py
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
    from trainer import policy
    from trainer.data import scan_folder
    from trainer.distributed import local_device

    from .pipeline import file_defaults, job_recipe

    try:
        files = scan_folder(folder).paths
    except ValueError as e:  # an empty folder: say so, not a traceback
        raise SystemExit(f"nothing to train on: {e}") from None
    n = len(files)
    device = local_device(settings.train_device)
    short_side = policy.median_short_side([folder / p for p in files])
    cfg = job_recipe(file_defaults(settings), {}, n, device.type == "cuda", short_side)
    budget = (f"for about {settings.cpu_train_minutes:g} min of training; with a GPU the paper's full recipe runs)"
              if device.type == "cpu" else f"{cfg.epochs} epochs)")
    print(f"no version yet: training a first one on {folder} ({n} images; {device}: {cfg.arch} width {cfg.width} "
          f"at {cfg.image_size} px, {budget}")
    r = _post_first_job(base, headers)
    if r.status_code == 409:
        print(f"a job is already running ({r.json()['job_id']}): following it")
    elif r.status_code != 202:
        raise SystemExit(f"could not start the first training job: {r.status_code} {r.text}")
    return r.json()["job_id"]
