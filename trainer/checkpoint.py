"""One checkpoint dict, one resume helper, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch


def code_version() -> str:
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


def save_checkpoint(path: str | Path, *, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, config: dict, history: list[dict]) -> None:
    """epoch = number of completed epochs."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    blob = {"learner": learner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "rng": rng_state(), "config": config, "history": history, "code_version": code_version()}
    with open(tmp, "wb") as fh:
        torch.save(blob, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, *, learner: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[int, list[dict], dict]:
    """Restore learner and optimiser in place -> (completed epochs, history, saved config)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    learner.load_state_dict(blob["learner"])
    optimizer.load_state_dict(blob["optimizer"])
    set_rng_state(blob["rng"])
    return blob["epoch"], blob["history"], blob["config"]
