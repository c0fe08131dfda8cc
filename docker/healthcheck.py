"""Container health checks, run by Docker inside the container (the image has Python, not curl).

    python /app/healthcheck.py api       # GET /ready answers 200: a version is loaded and searchable
    python /app/healthcheck.py worker    # the Celery worker of this container answers a ping through Redis
    python /app/healthcheck.py watcher   # a folder watcher rewrote its progress record lately (or watching is off)

Exit status 0 healthy, 1 not, with one line saying why. The api is unhealthy until a first version is
published (/ready answers 503 until then); /health is the liveness probe for orchestrators that restart.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

API_PORT = 8000  # the port `npid serve` listens on inside the container (docker-compose.yml, Dockerfile)
READY_URL = f"http://127.0.0.1:{API_PORT}/ready"


def api() -> str | None:
    """None when ready, else why not."""
    try:
        with urllib.request.urlopen(READY_URL, timeout=5) as r:
            return None if r.status == 200 else f"{READY_URL} answered {r.status}"
    except urllib.error.HTTPError as e:  # 503 until a version is loaded: its body says why
        return f"{READY_URL} answered {e.code}: {e.read(300).decode(errors='replace')}"
    except OSError as e:
        return f"{READY_URL} unreachable: {e}"


def worker() -> str | None:
    """None when this container's worker answers a ping, else why not. Imports no torch: cheap enough to poll."""
    from kombu.exceptions import OperationalError

    from service.jobs.queue import make_celery
    from service.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as e:
        return str(e)
    node = f"celery@{socket.gethostname()}"  # Celery's default node name
    redis_url = settings.masked()["redis_url"]
    try:
        replies = make_celery(settings.redis_url).control.ping(destination=[node], timeout=5)
    except (OperationalError, OSError) as e:
        return f"cannot reach Redis at {redis_url}: {e}"
    return None if replies else f"{node} did not answer a ping through {redis_url}"


def watcher() -> str | None:
    """None when watching is off or a watcher (this one, or the one holding the watch lock) rewrote its progress
    record (<artifacts>/watch.json) within the last minute, else why not."""
    from service.live.watching import read_progress
    from service.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as e:
        return str(e)
    if not settings.watch:
        return None
    progress = read_progress(settings.artifacts_dir)
    if progress is None:
        return "no watcher has written its progress yet"
    return f"the watcher's progress was last written {progress.updated}" if progress.stale else None


CHECKS = {"api": api, "worker": worker, "watcher": watcher}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: healthcheck.py {'|'.join(CHECKS)}", file=sys.stderr)
        return 1  # Docker reserves 2
    problem = CHECKS[argv[0]]()
    print(problem or "healthy")
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
