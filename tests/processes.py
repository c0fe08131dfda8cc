"""Servers the tests start as real processes: a private persistent redis-server, an `npid worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ports
import redis


class RedisServer:
    """A private, persistent (append-only file) redis-server on a free port, restartable on the same port."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = ports.free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(), 10, "redis-server did not start")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Worker:
    """`npid worker` as a child process in its own process group (so SIGKILL takes the pool child too)."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.proc = env, log, None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--loglevel", "INFO"],
                                     env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout_s: float, message: str, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(message)


def wait_for_worker(redis_url: str, timeout_s: float = 90) -> None:
    """Until a worker has announced itself in Redis: before that, POST /jobs/* answers 503 "no worker"."""
    from service.jobs.store import JobStore

    jobs = JobStore(redis_url)
    wait_for(lambda: jobs.workers_alive(), timeout_s, "the worker never announced itself", every_s=0.1)


def empty_redis_db(url: str) -> None:
    """Flush one database of the shared Redis for a test; skip the test when no Redis answers."""
    import pytest

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).flushdb()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379 (scripts/test.sh starts one)")
