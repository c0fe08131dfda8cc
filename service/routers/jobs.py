"""Background jobs: retrain (POST /jobs/train), re-index (POST /jobs/index), status, list, cancel.

The handlers are plain `def`: FastAPI runs them in its thread pool, so the (fast-failing) Redis calls never
block the event loop that serves /search.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..auth import require_api_key, require_read_access
from ..jobs import Job, JobConflict, JobStore, JobsUnavailable
from ..queue import INDEX_TASK, TRAIN_TASK, make_celery, send
from ..schemas import ErrorResponse

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])


class TrainOverrides(BaseModel):
    """Optional changes to the training recipe of this job (the rest: NPID_TRAIN_CONFIG and the machine budget)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int | None = Field(None, ge=1, le=1000)
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] | None = None
    objective: Literal["softmax", "nce", "infonce", "parametric"] | None = None
    temperature: float | None = Field(None, gt=0, le=10)
    negatives: int | None = Field(None, ge=1, le=65536)
    batch_size: int | None = Field(None, ge=2, le=4096)
    image_size: int | None = Field(None, ge=8, le=512)
    init: Literal["scratch", "live"] | None = Field(
        None, description="live: fine-tune the live model, its embeddings filling the memory bank (warm start)")
    publish: Literal["if_better", "always"] | None = Field(
        None, description="if_better (default): publish only if the label-free quality is not below the live "
                          "version's; always: publish regardless")
    resume: str | None = Field(None, pattern=r"^[0-9a-f]{12}$",
                               description="continue this run (a train job's id) to `epochs`; the background trainer")

    @model_validator(mode="after")
    def _one_starting_point(self) -> TrainOverrides:
        if self.resume and self.init == "live":
            raise ValueError("resume and init=live exclude each other: a resumed run keeps its own weights")
        return self

    def to_config(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        if "backbone" in d:
            d["arch"] = d.pop("backbone")
        return d


class JobAccepted(BaseModel):
    job_id: str
    state: str


class JobConflictResponse(BaseModel):
    detail: str
    job_id: str


class JobOut(BaseModel):
    id: str
    kind: Literal["train", "index"]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    created: datetime
    started: datetime | None
    finished: datetime | None
    progress: dict[str, Any] = Field(description="phase (loading, training, embedding, indexing, publishing), "
                                                 "epoch, step, loss, knn_top1, images_per_s, eta_s")
    version: str | None = Field(description="the version this job built: published unless metrics.published is "
                                            "false (the promotion gate kept it back)")
    metrics: dict[str, Any]
    error: str | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        def ts(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, timezone.utc)

        return cls(id=job.id, kind=job.kind, state=job.state, params=job.params, created=ts(job.created),
                   started=ts(job.started), finished=ts(job.finished), progress=job.progress,
                   version=job.version, metrics=job.metrics, error=job.error)


def get_jobs(request: Request) -> JobStore:
    state = request.app.state
    if getattr(state, "jobs", None) is None:
        s = state.settings
        state.jobs = JobStore(s.redis_url, s.jobs_lock_ttl_s, s.jobs_heartbeat_s)
        state.celery = make_celery(s.redis_url)
    return state.jobs


def _unavailable(e: Exception) -> HTTPException:
    return HTTPException(503, str(e), headers={"Retry-After": "5"})


def _submit(request: Request, jobs: JobStore, kind: Literal["train", "index"], params: dict) -> JSONResponse:
    try:
        job = jobs.create(kind, params)
    except JobConflict as e:
        return JSONResponse({"detail": f"a job is already queued or running: {e.job_id}", "job_id": e.job_id},
                            status_code=409)
    except JobsUnavailable as e:
        raise _unavailable(e) from e
    try:
        send(request.app.state.celery, TRAIN_TASK if kind == "train" else INDEX_TASK, job.id)
    except (OperationalError, OSError) as e:
        jobs.discard(job, f"could not queue the job: {e}")
        raise _unavailable(JobsUnavailable(f"the job queue is unavailable: {e}")) from e
    log.info("queued %s job %s %s", kind, job.id, params)
    return JSONResponse({"job_id": job.id, "state": job.state}, status_code=202,
                        headers={"Location": f"/jobs/{job.id}"})


WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted}, 409: {"model": JobConflictResponse}, 503: {"model": ErrorResponse}}


@router.post("/train", status_code=202, response_model=JobAccepted, responses=WRITE_RESPONSES,
             dependencies=[Depends(require_api_key)])
def train_job(request: Request, overrides: TrainOverrides | None = None, jobs: JobStore = Depends(get_jobs)):
    """Retrain on the collection in the background, then index and publish the new version."""
    return _submit(request, jobs, "train", overrides.to_config() if overrides else {})


@router.post("/index", status_code=202, response_model=JobAccepted, responses=WRITE_RESPONSES,
             dependencies=[Depends(require_api_key)])
def index_job(request: Request, jobs: JobStore = Depends(get_jobs)):
    """Re-embed the collection folder with the live model (no training) and publish a new version."""
    return _submit(request, jobs, "index", {})


def _get(jobs: JobStore, job_id: str) -> Job:
    try:
        job = jobs.get(job_id)
    except JobsUnavailable as e:
        raise _unavailable(e) from e
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("", response_model=list[JobOut], dependencies=[Depends(require_read_access)],
            responses={503: {"model": ErrorResponse}})
def list_jobs(limit: int = 20, jobs: JobStore = Depends(get_jobs)) -> list[JobOut]:
    """Recent jobs, newest first."""
    if not 1 <= limit <= 200:
        raise HTTPException(422, "limit must be between 1 and 200")
    try:
        return [JobOut.of(j) for j in jobs.recent(limit)]
    except JobsUnavailable as e:
        raise _unavailable(e) from e


@router.get("/{job_id}", response_model=JobOut, dependencies=[Depends(require_read_access)],
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def job_status(job_id: str, jobs: JobStore = Depends(get_jobs)) -> JobOut:
    """State and progress of one job."""
    return JobOut.of(_get(jobs, job_id))


@router.delete("/{job_id}", response_model=JobOut, dependencies=[Depends(require_api_key)],
               responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def cancel_job(job_id: str, jobs: JobStore = Depends(get_jobs)) -> JobOut:
    """Cancel: a queued job at once, a running one at its next step; a cancelled job publishes nothing."""
    _get(jobs, job_id)
    try:
        job = jobs.cancel(job_id)
    except JobsUnavailable as e:
        raise _unavailable(e) from e
    return JobOut.of(job)
