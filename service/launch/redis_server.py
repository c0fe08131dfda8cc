"""The Redis that `npid up` needs: the one at NPID_REDIS_URL when it answers, else a redis-server child it
starts on that local address (nothing saved to disk: job records live as long as the session)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import redis

from .supervise import Child


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_child(url: str, env: dict[str, str], logs: Path, say: Callable[[str], None]) -> Child:
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
    return Child("redis-server", argv, env, logs / "redis.log", say)


def wait_redis(url: str, redis_server: Child) -> None:
    for _ in range(100):
        if redis_answers(url):
            return
        if not redis_server.running():
            break
        time.sleep(0.1)
    raise SystemExit(f"redis-server did not come up at {url} (see {redis_server.log_path})")
