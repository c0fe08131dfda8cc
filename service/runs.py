"""Run folders of training jobs (`<artifacts>/runs/<job id>/`): which to keep, and removing the rest.

A finished job's version already holds its model, so its run folder is only clutter, except for a failed
training job: its `checkpoint.pt` is what POST /jobs/<id>/resume continues from.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def runs_dir(artifacts_dir: Path) -> Path:
    return artifacts_dir / "runs"


def checkpoint_of(artifacts_dir: Path, job_id: str) -> Path:
    return runs_dir(artifacts_dir) / job_id / "checkpoint.pt"


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
