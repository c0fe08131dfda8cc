"""`npid up` keeps improving the first version: the same run goes on training in stages, and each stage's
version is published when its label-free quality gained at least NPID_IMPROVE_MARGIN points over the live
one (the promotion gate of service/jobs/promotion.py, with a margin), until the full recipe's epochs.

Each stage is a train job `{"extend": RUN, "epochs": E}`: the worker reloads the run's checkpoint (model,
memory bank, optimiser, RNG) and trains on from where it stopped, to E epochs, E doubling per stage. The
schedule is the run's own (cosine over the stage's E), so each stage restarts the learning rate from where
the longer cosine puts it, as in SGDR. NPID_KEEP_TRAINING=0 turns it off. Talks to the API like any client,
so the terminal and the page (GET /jobs) show the same jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from trainer.config import TrainConfig

from ..jobs.vocabulary import FINISHED

FULL_EPOCHS = TrainConfig().epochs  # the paper's recipe: 200
POLL_S = 2.0


def next_epochs(done: int, full: int = FULL_EPOCHS) -> int:
    """The next stage's total epochs: double what is done, at least one more, at most `full`."""
    return min(full, max(done + 1, 2 * done))


def stage_line(job: dict, full: int) -> str:
    """One terminal line for a finished stage."""
    m = job.get("metrics") or {}
    epochs = (m.get("train_config") or {}).get("epochs")
    if job["state"] != "succeeded":
        return f"background training stopped at stage {epochs}/{full} epochs: {job['state']}: {job.get('error')}"
    q, live = m["quality"]["self_top1"], (m.get("live_quality") or {}).get("self_top1")
    was = "" if live is None else f" (live {live:.1f}%)"
    verdict = f"published version {job['version']}" if m.get("published") else f"kept {m.get('live_version')}"
    knn = m.get("knn") or {}
    knn_txt = "".join(f", kNN top-1 {v:.1f}%" for k, v in knn.items() if k.startswith("top1@"))
    return f"epoch {epochs}/{full}: self-retrieval top-1 {q:.1f}%{was}{knn_txt}: {verdict}"


def keep_improving(base: str, headers: dict, first_job: dict, alive: Callable[[], bool],
                   full: int = FULL_EPOCHS, say: Callable[[str], None] = print) -> dict | None:
    """Run the stages after `first_job` until `full` epochs, a failure, or `alive()` turns False.

    Returns the last stage's job record (None when no stage ran).
    """
    run = first_job["metrics"]["run"]
    done = first_job["metrics"]["train_config"]["epochs"]
    last = None
    if done < full:
        say(f"training goes on in the background to {full} epochs; a better version is published when "
            "self-retrieval gains (NPID_KEEP_TRAINING=0 turns this off)")
    while done < full and alive():
        target = next_epochs(done, full)
        try:
            r = httpx.post(f"{base}/jobs/train", headers=headers, json={"extend": run, "epochs": target}, timeout=10)
        except httpx.TransportError:  # the API is restarting: ask again
            time.sleep(POLL_S)
            continue
        if r.status_code in (409, 503):  # another job runs, or the worker is restarting: wait
            time.sleep(POLL_S)
            continue
        if r.status_code != 202:
            say(f"background training stopped: {r.status_code} {r.text}")
            return last
        last = wait_for(base, headers, r.json()["job_id"], alive)
        if last is None:
            return None
        say(stage_line(last, full))
        if last["state"] != "succeeded":
            return last
        done = target
    return last


def wait_for(base: str, headers: dict, job_id: str, alive: Callable[[], bool]) -> dict | None:
    """Poll a job until it finishes; None if `alive()` turns False first. An API that does not answer for a
    moment (restarting under `npid up`'s supervision) is asked again at the next poll."""
    while alive():
        try:
            job = httpx.get(f"{base}/jobs/{job_id}", headers=headers, timeout=5).json()
        except httpx.TransportError:
            job = {"state": "unknown"}
        if job.get("state") in FINISHED:
            return job
        time.sleep(POLL_S)
    return None
