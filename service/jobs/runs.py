"""Run folders of training jobs (`<artifacts>/runs/<job id>/`): which to keep, and removing the rest.

A finished job's version already holds its model, so its run folder is only clutter, except for a failed
training job: its `checkpoint.pt` is what POST /jobs/<id>/resume continues from.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from .store import Job

log = logging.getLogger(__name__)


def runs_dir(artifacts_dir: Path) -> Path:
    return artifacts_dir / "runs"


def checkpoint_of(artifacts_dir: Path, job_id: str) -> Path:
    return runs_dir(artifacts_dir) / job_id / "checkpoint.pt"


def runs_to_keep(recent: list[Job], starting: Job) -> set[str]:
    """Run folders worth keeping when `starting` begins: its own, the run it continues, every failed training
    run (POST /jobs/<id>/resume continues it), and the latest succeeded training run (the background trainer
    continues it; `"run"` in its metrics names it)."""
    keep = {starting.id, starting.params.get("extend")}
    keep |= {j.id for j in recent if j.kind == "train" and j.state == "failed"}
    latest = next((j for j in recent if j.kind == "train" and j.state == "succeeded"), None)  # recent: newest first
    if latest is not None:
        keep.add((latest.metrics or {}).get("run", latest.id))
    return {k for k in keep if k}


def clean_runs(artifacts_dir: Path, keep: Iterable[str]) -> list[str]:
    """Remove every run folder whose job id is not in `keep`; returns the ids removed."""
    root, keep = runs_dir(artifacts_dir), set(keep)
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("removed the run folders of %d finished job(s)", len(removed))
    return removed


def carry_from(run: Path, next_free_id: int | None = None) -> int:
    """The store's next free id when the run began: the images added from there on are carried onto its version.

    A new run records `next_free_id` in its folder; a resumed run (next_free_id None) reads it back, so the
    uploads made while its first worker trained are still carried after the resume.
    """
    path = run / "carry_from.txt"
    if next_free_id is None:
        return int(path.read_text())
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{next_free_id}\n")
    return next_free_id
