"""`npid up` keeps what it started running: a SIGKILLed worker is restarted while the API keeps serving, a
job posted afterwards succeeds, and Ctrl-C stops every process it started (its own redis-server included)
and nothing else. Real processes throughout: `npid up`, redis-server, the Celery worker, uvicorn.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ports
import pytest
import redis
from processes import wait_for_worker

from service.launch.progress import epochs_done
from service.launch.supervise import backoff_s, last_line

ROOT = Path(__file__).resolve().parents[2]
KEY = "launch-test-key-0123456789"


class Terminal:
    """The lines `npid up` prints, read by a thread while the test goes on."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.2)
        raise AssertionError(f"`npid up` never printed /{pattern}/; it printed:\n" + "\n".join(self.lines))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def search(base: str, image: Path) -> httpx.Response:
    return httpx.post(f"{base}/search", params={"k": 3}, timeout=30,
                      files={"file": (image.name, image.read_bytes(), "application/octet-stream")})


def test_backoff_doubles_up_to_its_cap():
    assert [backoff_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_progress_is_never_negative_nor_past_the_end():
    assert epochs_done({"phase": "loading", "epoch": 0, "epochs": 6}) == 0  # was -1.0 (-17%)
    assert epochs_done({"epochs": 6}) == 0
    assert epochs_done({"phase": "embedding", "epoch": 14, "step": 0, "steps": 312, "epochs": 14}) == 14  # was 13
    assert epochs_done({"epoch": 1, "epochs": 6, "step": 5, "steps": 10}) == 0.5
    assert epochs_done({"epoch": 6, "epochs": 6, "step": 10, "steps": 10}) == 6
    assert epochs_done({"epoch": 7, "epochs": 6, "step": 3, "steps": 10}) == 6


def test_last_line_of_a_log(tmp_path):
    log = tmp_path / "x.log"
    assert last_line(log) == ""
    log.write_text("first\nsecond\n\n")
    assert last_line(log) == "second"


def start_up(collection: Path, store: Path, tmp_path: Path) -> tuple[subprocess.Popen, Terminal, str, str]:
    """`npid up` over a collection with a published version, on free ports, with a Redis URL where nothing
    answers (so it starts its own redis-server); -> (process, its terminal, API base URL, Redis URL)."""
    api_port, redis_port = ports.free_port(), ports.free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPID_")}
    env.update(PYTHONPATH=str(ROOT), NPID_REDIS_URL=redis_url, NPID_API_KEY=KEY, NPID_POLL_INTERVAL_S="0.5",
               NPID_RATE_LIMIT_PER_MINUTE="0", NPID_WORKER_THREADS="1",
               NPID_KEEP_TRAINING="0")  # supervision alone: no background stages competing for the worker
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", str(collection), "--artifacts", str(store),
                           "--logs", str(tmp_path / "logs"), "--port", str(api_port)],
                          cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return up, Terminal(up), f"http://127.0.0.1:{api_port}", redis_url


def test_sigkilled_worker_is_restarted_search_keeps_answering_ctrl_c_stops_all(dirs, tmp_path):
    collection, store = dirs
    up, terminal, base, redis_url = start_up(collection, store, tmp_path)
    logs = tmp_path / "logs"
    image = sorted(collection.glob("*/*.png"))[0]
    try:
        started = terminal.wait_for(r"started the worker \(pid (\d+)\) and the API \(pid (\d+)\)", 60)
        worker_pid, api_pid = int(started[1]), int(started[2])
        terminal.wait_for("npid-search is live", 180)
        assert search(base, image).status_code == 200

        os.kill(worker_pid, signal.SIGKILL)
        said = len(terminal.lines)
        terminal.wait_for(r"worker killed by signal 9; restarting in 1 s", 30, said)
        assert search(base, image).status_code == 200  # the API goes on while the worker is down
        restarted = int(terminal.wait_for(r"worker restarted \(pid (\d+)\)", 30, said)[1])
        assert restarted != worker_pid and alive(api_pid)
        assert search(base, image).status_code == 200

        wait_for_worker(redis_url)  # the restarted worker announces itself once it has started
        r = httpx.post(f"{base}/jobs/index", headers={"X-API-Key": KEY}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 240
        while (job := httpx.get(f"{base}/jobs/{job_id}", timeout=10).json())["state"] not in (
                "succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"the job did not end: {job}"
            assert search(base, image).status_code == 200
            time.sleep(1)
        assert job["state"] == "succeeded", job

        banner = "\n".join(terminal.lines)
        assert "celery@" not in banner and "superuser" not in banner and " -------------- " not in banner
        assert "celery@" in (logs / "worker.log").read_text()  # Celery's banner went to the log file instead
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(timeout=90)
    assert code == 0, "\n".join(terminal.lines)
    for pid in (restarted, api_pid):
        assert not alive(pid), f"pid {pid} outlived `npid up`"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()  # its own redis-server stopped
    assert alive(os.getpid())


def test_closing_the_terminal_stops_what_npid_up_started(dirs, tmp_path):
    """SIGHUP (the terminal window closed) stops the children too: they run in sessions of their own, so
    without this they would outlive `npid up` (seen: a worker and a redis-server left running)."""
    collection, store = dirs
    up, terminal, base, redis_url = start_up(collection, store, tmp_path)
    try:
        started = terminal.wait_for(r"started the worker \(pid (\d+)\) and the API \(pid (\d+)\)", 60)
        terminal.wait_for("npid-search is live", 180)
    finally:
        up.send_signal(signal.SIGHUP)
        up.wait(timeout=90)
    for pid in (int(started[1]), int(started[2])):
        assert not alive(pid), f"pid {pid} outlived `npid up`"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
