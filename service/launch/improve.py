"""`npid up` keeps improving the first version: the same run goes on training in stages, and each stage's
version is published when its label-free quality gained at least NPID_IMPROVE_MARGIN points over the live
one (the promotion gate of service/jobs/promotion.py, with a margin), until the full recipe's epochs.

Each stage is a train job `{"extend": RUN, ...}`: the worker reloads the run's checkpoint (model, memory bank,
optimiser, RNG, time spent) and trains on from where it stopped. A run with a time budget and no epoch cap (the
CPU recipe) gets time stages: `"minutes": M`, M doubling per stage, each stage going on by the time left; a run
with an epoch count gets epoch stages: `"epochs": E`, E doubling. The schedule is the run's own, stretched over
the stage's longer budget, so each stage restarts the learning rate from where the longer schedule puts it, as
in SGDR. NPID_KEEP_TRAINING=0 turns it off. Talks to the API like any client, so the terminal and the page
(GET /jobs) show the same jobs.
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
    """The next epoch stage's total epochs: double what is done, at least one more, at most `full`."""
    return min(full, max(done + 1, 2 * done))


def next_stage(train_config: dict, done_epochs: float, full: int) -> dict:
    """The next stage's extension: doubled minutes for a time-budgeted run without an epoch cap, else epochs."""
    if train_config.get("minutes") and not train_config.get("epochs"):
        return {"minutes": 2 * train_config["minutes"]}
    return {"epochs": next_epochs(int(done_epochs), full)}


def stage_line(job: dict, full: int) -> str:
    """One terminal line for a finished stage: its budget, the epochs planned and done, the quality, the verdict."""
    m = job.get("metrics") or {}
    cfg = m.get("train_config") or {}
    done = m.get("epochs")
    budget = f"{cfg['minutes']:g} min, " if cfg.get("minutes") and not cfg.get("epochs") else ""  # a time stage
    if job["state"] != "succeeded":
        planned = (job.get("progress") or {}).get("epochs")
        return (f"background training stopped at the stage of {budget}{planned or cfg.get('epochs')} epochs: "
                f"{job['state']}: {job.get('error')}")
    q, live = m["quality"]["self_top1"], (m.get("live_quality") or {}).get("self_top1")
    was = "" if live is None else f" (live {live:.1f}%)"
    verdict = f"published version {job['version']}" if m.get("published") else f"kept {m.get('live_version')}"
    knn = m.get("knn") or {}
    knn_txt = "".join(f", kNN top-1 {v:.1f}%" for k, v in knn.items() if k.startswith("top1@"))
    planned = f" (planned {m['epochs_planned']:g})" if budget and m.get("epochs_planned") else ""
    return f"{budget}epoch {done:g}/{full}{planned}: self-retrieval top-1 {q:.1f}%{was}{knn_txt}: {verdict}"


def keep_improving(base: str, headers: dict, first_job: dict, alive: Callable[[], bool],
                   full: int = FULL_EPOCHS, say: Callable[[str], None] = print) -> dict | None:
    """Run the stages after `first_job` until `full` epochs, a failure, or `alive()` turns False.

    Returns the last stage's job record (None when no stage ran).
    """
    run = first_job["metrics"]["run"]
    config, done = first_job["metrics"]["train_config"], first_job["metrics"]["epochs"]
    last = None
    if done < full:
        say(f"training goes on in the background to {full} epochs; a better version is published when "
            "self-retrieval gains (NPID_KEEP_TRAINING=0 turns this off)")
    while done < full and alive():
        stage = next_stage(config, done, full)
        try:
            r = httpx.post(f"{base}/jobs/train", headers=headers, json={"extend": run, **stage}, timeout=10)
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
        config, done = last["metrics"]["train_config"], last["metrics"]["epochs"]
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
