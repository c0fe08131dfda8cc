"""The child processes of `npid up`, kept running: one that dies is started again after a backoff.

Each child runs in its own process group (so Ctrl-C in the terminal reaches `npid up` only, which then stops
exactly the groups it started) and writes its output to its own log file, leaving the terminal to `npid up`'s
own lines. A child that exits is restarted after backoff_s(failures): 1, 2, 4 ... up to 30 s; one that had
run for a while before it died starts again from the shortest delay.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0  # a child that ran this long before exiting counts as healthy: the backoff starts over


def backoff_s(failures: int, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Delay before restart number `failures` (1-based): doubling from first_s, never above cap_s."""
    return min(cap_s, first_s * 2 ** max(failures - 1, 0))


def last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log file (what a child said before it died), or ''."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - limit, 0))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class Child:
    """One supervised process: its command, its log file, and when to start it again after it died."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 say: Callable[[str], None]) -> None:
        self.name, self.argv, self.env, self.log_path, self.say = name, argv, env, log_path, say
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at: float | None = None  # monotonic time of the pending restart, if the child is down

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tick(self) -> None:
        """Notice a death (say so, schedule the restart) or carry out a restart that is due."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
                self.say(f"{self.name} restarted (pid {self.pid})")
            return
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        self._kill_group(signal.SIGKILL)  # what the dead process left behind (e.g. Celery's pool children)
        self.failures = 1 if now - self.started_at >= STABLE_AFTER_S else self.failures + 1
        delay = backoff_s(self.failures)
        self.restart_at = now + delay
        why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        said = last_line(self.log_path)
        self.say(f"{self.name} {why}; restarting in {delay:g} s (log: {self.log_path})" +
                 (f"\n  its last line: {said}" if said else ""))

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM its process group, SIGKILL after timeout_s; no restart is pending afterwards."""
        self.restart_at = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._kill_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", self.name, timeout_s)
        self._kill_group(signal.SIGKILL)
        self.proc.wait()

    def _kill_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the group id is the child's pid (start_new_session)
        except ProcessLookupError:  # the group is gone already
            pass
