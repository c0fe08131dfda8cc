"""One checkpoint dict, one resume helper; written atomically (temporary file, fsync, rename) off the step.

`CheckpointWriter.save` takes a CPU snapshot of the state on the caller's thread (on a GPU: copies queued
on the stream behind the step that produced the state, so the host does not wait for them) and hands the
file write to a background thread, so a checkpoint costs a step one memory copy, not a 100 MB fsync.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from durable import atomic_write

log = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the trainer (once per run: it starts a subprocess)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_snapshot(obj: Any) -> Any:
    """A copy of obj (nested dicts / lists / tuples of tensors) on the CPU that later steps cannot change."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.to("cpu", non_blocking=True) if t.device.type == "cuda" else t.clone()
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(v) for v in obj)
    return obj


def checkpoint_state(*, learner: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                     epoch_progress: dict, config: dict, history: list[dict], version: str,
                     train_seconds: float = 0.0) -> dict:
    """The checkpoint dict. epoch: completed epochs; step: steps done in epoch + 1 (0 at an epoch boundary);
    epoch_progress: the partial epoch's running sums, to finish it exactly after a resume; train_seconds: the
    training phase's wall-clock time so far (a time budget goes on from there)."""
    return {"learner": learner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
            "epoch_progress": epoch_progress, "rng": rng_state(), "config": config, "history": list(history),
            "code_version": version, "train_seconds": train_seconds}


class CheckpointWriter:
    """Writes checkpoints to one path from a background thread, one at a time, newest wins."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict) -> None:
        """Snapshot `state` now; write it in the background (after the previous write has finished)."""
        snapshot = cpu_snapshot(state)
        ready = torch.cuda.Event() if any_cuda(state) else None
        if ready is not None:
            ready.record()  # the snapshot's copies are queued before this point of the stream
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(snapshot, ready), name="checkpoint", daemon=True)
        self._thread.start()

    def _write(self, snapshot: dict, ready) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            atomic_write(self.path, partial(torch.save, snapshot))
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Block until the pending write is on disk; re-raise its error, if any, here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing checkpoint {self.path} failed: {error}") from error


def any_cuda(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.device.type == "cuda"
    if isinstance(obj, dict):
        return any(any_cuda(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(any_cuda(v) for v in obj)
    return False


def read_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def restore(blob: dict, *, learner: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore learner, optimiser and RNG state in place from a checkpoint dict."""
    learner.load_state_dict(blob["learner"])
    optimizer.load_state_dict(blob["optimizer"])
    set_rng_state(blob["rng"])
