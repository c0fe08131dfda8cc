"""The first version's progress bar in `npid up`'s terminal, read from the job record over HTTP (GET /jobs/{id})
like any client, while the children stay supervised."""

from __future__ import annotations

import time

import httpx
from tqdm import tqdm

from ..jobs.vocabulary import FINISHED
from .supervise import Child


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


def postfix(progress: dict) -> str:
    """The bar's tail: the time left by the job's own clock (a training budget is a deadline), loss, images/s."""
    parts = []
    if progress.get("eta_s") is not None and progress.get("phase") == "training":
        minutes, seconds = divmod(int(progress["eta_s"]), 60)
        parts.append(f"{minutes}:{seconds:02d} left")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.3f}")
    if progress.get("images_per_s"):
        parts.append(f"{progress['images_per_s']:.0f} images/s")
    if progress.get("knn_top1") is not None:
        parts.append(f"kNN {progress['knn_top1']:.1f}%")
    return (", " + ", ".join(parts)) if parts else ""


def follow_job(base: str, headers: dict, job_id: str, children: list[Child]) -> dict:
    """A progress bar over the job's epochs until it ends (children kept alive meanwhile); the final record."""
    bar = tqdm(total=1, desc="first version", dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| epoch {n:.1f}/{total} [{elapsed}{postfix}]")
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
        items = f" {prog['done']}/{prog['total']}" if prog.get("total") else ""  # images decoded, embedded
        bar.set_description_str(f"first version: {prog.get('phase', job['state'])}{items}")
        bar.set_postfix_str(postfix(prog), refresh=False)
        bar.refresh()
        if job["state"] in FINISHED:
            bar.n = bar.total if job["state"] == "succeeded" else bar.n
            bar.close()
            return job
        time.sleep(1)
