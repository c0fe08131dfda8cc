"""Background jobs: retrain (POST /jobs/train), re-index (POST /jobs/index), status, list, cancel, resume.

The handlers are plain `def`: FastAPI runs them in its thread pool, so the (fast-failing) Redis calls never
block the event loop that serves /search. Errors (Redis away, no worker, a job holding the lock) are mapped to
HTTP in service/api/errors.py.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from celery import Celery
from fastapi import APIRouter, Path, Query, Request, Response
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.convertors import StringConvertor, register_url_convertor

from trainer.config import Objective, Stem
from trainer.model import Backbone

from ...jobs.queue import INDEX_TASK, TRAIN_TASK, send
from ...jobs.runs import checkpoint_of
from ...jobs.store import Job, JobConflict, JobStore, JobsUnavailable, NoWorker
from ...jobs.vocabulary import PHASES, JobKind, JobState
from ...jobs.warmstart import Init, PublishMode
from ..auth import READ, ReadAccess, WriteAccess, has_valid_key
from ..deps import JobsDep, QueueDep, SettingsDep
from ..errors import JobNotFound, without_paths
from ..schemas import ErrorResponse
from .common import INVALID, UNAVAILABLE, WRITE_AUTH

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="the id POST /jobs/train or /jobs/index gave")]
ACTIONS = ("train", "index")  # /jobs/<action>: POST-only paths beside /jobs/{job_id}


class JobIdSegment(StringConvertor):
    """The {job_id} segment of the routes' paths: any segment but an action's name, so that GET /jobs/train is the
    path /jobs/train answering 405 (it serves POST), not GET /jobs/{job_id} refusing the id "train". A malformed id
    still reaches the route, whose pattern answers 422 naming it."""

    regex = rf"(?!(?:{'|'.join(ACTIONS)})(?:/|$))[^/]+"


register_url_convertor("job_id", JobIdSegment())
JOB = "/{job_id:job_id}"


class TrainOverrides(BaseModel):
    """Optional changes to the training recipe of this job (the rest: NPID_TRAIN_CONFIG and the machine budget)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {  # _one_starting_point, in the schema
        "required": ["extend", "init"], "properties": {"extend": {"type": "string"}, "init": {"const": "live"}}}})
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60, description="wall-clock budget of the training "
                                   "phase (a deadline; default on a CPU: NPID_CPU_TRAIN_MINUTES; on a GPU: none)")
    epochs: int | None = Field(None, ge=1, le=1000, description="epochs to train; with a time budget, a cap")
    backbone: Backbone | None = None
    objective: Objective | None = None
    temperature: float | None = Field(None, gt=0, le=10)
    negatives: int | None = Field(None, ge=1, le=65536)
    batch_size: int | None = Field(None, ge=2, le=4096)
    image_size: int | None = Field(None, ge=8, le=512)  # px; default: trainer/recipe.py, from the collection
    width: int | None = Field(None, ge=4, le=256)  # first-stage channels of the ResNet
    stem: Stem | None = None  # default: cifar up to 64 px (trainer/recipe.py)
    init: Init | None = Field(
        None, description="live: fine-tune the live model, its embeddings filling the memory bank (warm start)")
    publish: PublishMode | None = Field(
        None, description="if_better (default): publish only if the label-free quality is not below the live "
                          "version's; always: publish regardless")
    extend: str | None = Field(None, pattern=r"^[0-9a-f]{12}$",
                               description="train this earlier run (a train job's id) on to `epochs` from its "
                                           "checkpoint; the background trainer's stages")

    @model_validator(mode="after")
    def _one_starting_point(self) -> TrainOverrides:
        if self.extend and self.init == "live":
            raise ValueError("extend and init=live exclude each other: an extended run keeps its own weights")
        return self

    def to_config(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        if "backbone" in d:
            d["arch"] = d.pop("backbone")
        return d


class JobAccepted(BaseModel):
    job_id: str
    state: Literal["queued"]


class JobConflictResponse(ErrorResponse):
    job_id: str = Field(description="the job holding the lock (or the one that cannot be resumed)")


class JobOut(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    params: dict[str, Any]
    created: datetime
    started: datetime | None
    finished: datetime | None
    attempt: int = Field(description="attempts started (more than 1 after a resume)")
    progress: dict[str, Any] = Field(description="phase (see phase_description), epoch, epochs, step, steps, loss, "
                                                 "knn_top1, images_per_s, eta_s")
    phase_description: str | None = Field(description="what the job is doing in its current phase; phases: " +
                                          "; ".join(f"{p}: {d}" for p, d in PHASES.items()))
    version: str | None = Field(description="the version this job built: published unless metrics.published is "
                                            "false (the promotion gate kept it back)")
    metrics: dict[str, Any] = Field(description="results; the training config only for callers with the key")
    error: str | None

    @classmethod
    def of(cls, job: Job, full: bool) -> JobOut:
        """`full`: the caller has the key and may see the job's config (which names server folders)."""
        def ts(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, timezone.utc)

        metrics = job.metrics if full else {k: v for k, v in job.metrics.items() if k != "train_config"}
        return cls(id=job.id, kind=job.kind, state=job.state, params=job.params, created=ts(job.created),
                   started=ts(job.started), finished=ts(job.finished), attempt=job.attempt, progress=job.progress,
                   version=job.version, metrics=metrics, error=None if job.error is None else without_paths(job.error),
                   phase_description=PHASES.get(job.progress.get("phase")) if job.state == "running" else None)


def _queue(queue: Celery, jobs: JobStore, job: Job) -> Response:
    try:
        send(queue, TRAIN_TASK if job.kind == "train" else INDEX_TASK, job.id)
    except (OperationalError, OSError) as e:
        log.error("could not queue job %s: %s", job.id, e)
        jobs.discard(job, "could not queue the job: the broker is unreachable")
        raise JobsUnavailable("the job queue is unavailable: cannot reach the broker") from e
    log.info("queued %s job %s %s", job.kind, job.id, job.params)
    return Response(JobAccepted(job_id=job.id, state="queued").model_dump_json(), status_code=202,
                    media_type="application/json", headers={"Location": f"/jobs/{job.id}"})


def _submit(queue: Celery, jobs: JobStore, kind: JobKind, params: dict) -> Response:
    if not jobs.workers_alive():
        raise NoWorker()
    return _queue(queue, jobs, jobs.create(kind, params))


def _get(jobs: JobStore, job_id: str) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


LOCATION = {"Location": {"description": "the job's status URL", "schema": {"type": "string"}}}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted, "headers": LOCATION},
    409: {"model": JobConflictResponse, "description": "another job is queued or running"},
    **WRITE_AUTH, **INVALID, **UNAVAILABLE}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job"}, **INVALID, **UNAVAILABLE}


@router.post("/train", status_code=202, response_model=JobAccepted, responses=WRITE_RESPONSES,
             dependencies=[WriteAccess])
def train_job(jobs: JobsDep, queue: QueueDep, overrides: TrainOverrides | None = None) -> Response:
    """Retrain on the collection in the background, then index and publish the new version."""
    return _submit(queue, jobs, "train", overrides.to_config() if overrides else {})


@router.post("/index", status_code=202, response_model=JobAccepted, responses=WRITE_RESPONSES,
             dependencies=[WriteAccess])
def index_job(jobs: JobsDep, queue: QueueDep) -> Response:
    """Re-embed the collection folder with the live model (no training) and publish a new version."""
    return _submit(queue, jobs, "index", {})


@router.get("", response_model=list[JobOut], openapi_extra=READ, dependencies=[ReadAccess],
            responses={**INVALID, **UNAVAILABLE})
def list_jobs(request: Request, jobs: JobsDep,
              limit: Annotated[int, Query(ge=1, le=200, description="jobs to list")] = 20) -> list[JobOut]:
    """Recent jobs, newest first."""
    full = has_valid_key(request)
    return [JobOut.of(j, full) for j in jobs.recent(limit)]


@router.get(JOB, response_model=JobOut, openapi_extra=READ, dependencies=[ReadAccess],
            responses=JOB_RESPONSES)
def job_status(request: Request, job_id: JobId, jobs: JobsDep) -> JobOut:
    """State and progress of one job."""
    return JobOut.of(_get(jobs, job_id), has_valid_key(request))


@router.post(JOB + "/cancel", status_code=202, response_model=JobOut, dependencies=[WriteAccess],
             responses={**JOB_RESPONSES, **WRITE_AUTH})
def cancel_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """Cancel: a queued job at once, a running one at its next step (it then publishes nothing). A finished
    job is answered as it is. The job stays readable at GET /jobs/{job_id}."""
    _get(jobs, job_id)
    return JobOut.of(jobs.cancel(job_id), True)


@router.post(JOB + "/resume", status_code=202, response_model=JobAccepted, dependencies=[WriteAccess],
             responses={**WRITE_RESPONSES, 404: JOB_RESPONSES[404],
                        409: {"model": JobConflictResponse, "description": "not resumable, or another job holds "
                                                                          "the lock"}})
def resume_job(job_id: JobId, jobs: JobsDep, queue: QueueDep, settings: SettingsDep) -> Response:
    """Continue a failed training job (worker lost, lease lost, time limit) from its last checkpoint, under the
    same id. 409 when it is not a failed training job or left no checkpoint."""
    job = _get(jobs, job_id)
    if job.kind == "train" and job.state == "failed" and not checkpoint_of(settings.artifacts_dir, job_id).exists():
        raise JobConflict(job_id, f"job {job_id} left no checkpoint to resume from: post a new training job")
    if not jobs.workers_alive():
        raise NoWorker()
    return _queue(queue, jobs, jobs.resume(job_id))
