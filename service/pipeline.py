"""What the background jobs do, free of Celery and HTTP: retrain + index + publish, or re-embed + publish.

Only a complete, validated version is ever published: the index is built unpublished, the job checks for
a cancel request, then `ArtifactStore.publish` moves CURRENT in one atomic step. The API's engine picks the
new version up by itself (it polls CURRENT).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from index import ArtifactStore, IndexConfig
from trainer.augment import Preprocess
from trainer.config import TrainConfig
from trainer.data import ImageFolder, scan_folder
from trainer.distributed import local_device
from trainer.embed import embed_dataset, load_model_and_config, write_export
from trainer.quality import record_in_export
from trainer.train import Progress, TrainingCancelled, train

from .jobs import Job, JobStore, JobsUnavailable
from .promotion import current_version, decide, export_quality, live_quality
from .settings import Settings
from .warmstart import JobRequest, resumed_config, warm_start_config

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 1.0
SOFTMAX_MAX_IMAGES = 200_000  # up to here jobs train with the exact softmax (B x n logits per step)

# The CPU recipe (docs/cpu-recipe.md measures each choice at a fixed compute budget). Where it differs from
# the paper: the airnet backbone instead of ResNet-18 (faster per image: more epochs in the budget), the
# memory bank filled with the network's own embeddings before the first step instead of random vectors,
# batch 32 instead of 128 (4x the steps in the same epochs), a cosine schedule sized to the budget instead
# of 200 epochs with steps.
CPU_RECIPE: dict[str, Any] = {"arch": "airnet", "width": 32, "bank_init": "features", "schedule": "cosine",
                              "batch_size": 32, "lr": 0.03}
# training images/s of the recipe (airnet-w32, batch 32) on one worker thread, with augmentation: 1.64 x the
# 250 of the width-16 ResNet-18 at batch 128 recorded by docs/jobs-benchmark.md, a ratio measured side by
# side (docs/cpu-recipe.md)
CPU_IMAGES_PER_S = 411.0
MAX_CPU_EPOCHS = 50


def training_config(settings: Settings, overrides: dict[str, Any], n_images: int, cuda: bool) -> TrainConfig:
    """The job's TrainConfig: file defaults (NPID_TRAIN_CONFIG), then the machine's budget, then overrides.

    With a GPU: the paper's recipe (ResNet-18, 200 epochs). On a CPU: CPU_RECIPE and as many epochs as fit
    NPID_CPU_TRAIN_MINUTES, so a first version is live in minutes (a width set by the file or the request
    scales the rate by the square of the width ratio). Collections up to SOFTMAX_MAX_IMAGES use the exact
    softmax (tau 0.1, Table 1's best row) instead of NCE.
    """
    base = TrainConfig.from_file(settings.train_config).to_dict() if settings.train_config else {}
    if cuda:
        budget: dict[str, Any] = {}
    else:
        width = overrides.get("width", base.get("width", CPU_RECIPE["width"]))
        rate = CPU_IMAGES_PER_S * (CPU_RECIPE["width"] / width) ** 2
        epochs = int(settings.cpu_train_minutes * 60 * rate / max(n_images, 1))
        budget = {**CPU_RECIPE, "width": width, "epochs": max(1, min(epochs, MAX_CPU_EPOCHS))}
    if n_images <= SOFTMAX_MAX_IMAGES:  # exact softmax: the paper's best row, and stable on small collections
        budget.update(objective="softmax", temperature=0.1)
    merged = {**TrainConfig().to_dict(), **budget, **base, **overrides}
    merged["negatives"] = max(1, min(merged["negatives"], n_images - 1))
    merged["knn_every"] = base.get("knn_every", 5)
    return TrainConfig.from_dict(merged)


class JobReporter:
    """Turns trainer progress into job records and answers the trainer's `should_stop` from Redis.

    As a context manager it also renews the job's lease from a background thread every heartbeat_s, so
    long phases without progress reports (final evaluation, embedding, indexing) never look like a dead
    worker; the thread dies with the process, so a killed worker's lease still expires.
    """

    def __init__(self, store: JobStore, job: Job):
        self.store, self.job = store, job
        self.last_check, self.stop = 0.0, False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _keep_alive(self) -> None:
        while not self._done.wait(self.store.heartbeat_s):
            try:
                with self._lock:
                    self.store.beat(self.job, force=True)
            except JobsUnavailable as e:  # Redis away for a moment: the next beat retries
                log.warning("job %s: could not renew its lease: %s", self.job.id, e)

    def phase(self, name: str, **extra: Any) -> None:
        with self._lock:
            self.store.beat(self.job, {"phase": name, **extra}, force=True)

    def progress(self, p: Progress) -> None:
        with self._lock:
            self.store.beat(self.job, {k: v for k, v in asdict(p).items() if v is not None},
                            force=p.phase != "training")

    def should_stop(self) -> bool:
        if not self.stop and time.monotonic() - self.last_check >= CANCEL_CHECK_S:
            self.last_check = time.monotonic()
            self.stop = self.store.cancel_requested(self.job.id)
        return self.stop


def publish_unless_cancelled(store: ArtifactStore, export_dir: Path, reporter: JobReporter,
                             publish: bool = True) -> str:
    """Build a version from the export; publish it unless cancelled (or unless the gate said no)."""
    reporter.phase("indexing")
    version = store.build(export_dir, IndexConfig(), publish=False)
    if reporter.store.cancel_requested(reporter.job.id):
        raise TrainingCancelled("cancelled before publishing")
    if publish:
        reporter.phase("publishing", version=version)
        store.publish(version)
    return version


def run_train_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Train on the collection, export, build an index, publish. Records the outcome on the job."""
    run_job(jobs, job, lambda reporter: _train(settings, job, reporter))


def run_index_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Re-embed the collection with the live model (no training) and publish a new version."""
    run_job(jobs, job, lambda reporter: _reindex(settings, job, reporter))


def run_job(jobs: JobStore, job: Job, body: Callable[[JobReporter], tuple[str, dict]]) -> None:
    try:
        with JobReporter(jobs, job) as reporter:  # the lease is renewed until the body returns
            version, metrics = body(reporter)
    except TrainingCancelled:
        log.info("job %s cancelled", job.id)
        jobs.cancelled(job)
    except Exception as e:  # a job must end in a recorded state whatever happened; the log keeps the trace
        log.exception("job %s failed", job.id)
        jobs.fail(job, f"{type(e).__name__}: {e}")
    else:
        jobs.succeed(job, version, metrics)


def _configure_threads(settings: Settings) -> None:
    """Leave the API a core: training takes all but one (NPID_WORKER_THREADS overrides)."""
    threads = settings.worker_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)


def _train(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    _configure_threads(settings)
    reporter.phase("loading")
    request = JobRequest.of(job.params)
    store = ArtifactStore(settings.artifacts_dir)
    device = local_device(settings.train_device)  # CUDA is first touched here, inside the task
    runs = settings.artifacts_dir / "runs"
    if request.resume:  # the background trainer: the same run, more epochs
        run = runs / request.resume
        cfg = resumed_config(run, request.overrides)
    else:
        run = runs / job.id
        n = len(scan_folder(settings.collection_root))
        cfg = training_config(settings, request.overrides, n, device.type == "cuda")
        cfg = cfg.replace(data=str(settings.collection_root), out=str(run), device=str(device), progress=False,
                          extra={**cfg.extra, "images": n})
        if request.init == "live":
            cfg = warm_start_config(cfg, store, run)
    log.info("job %s: training %s", job.id, cfg.to_dict())
    metrics = train(cfg, on_progress=reporter.progress, should_stop=reporter.should_stop,
                    resume=bool(request.resume))
    reporter.phase("measuring")
    ds = ImageFolder(settings.collection_root)
    ds.validate()
    quality = export_quality(run / "export", ds, device)
    record_in_export(run / "export", quality)
    live = current_version(store)
    live_q = None if live is None else live_quality(live, ds, quality["key"], device)
    margin = settings.improve_margin if request.resume else 0.0
    decision = decide(quality, live_q, request.publish, margin)
    log.info("job %s: %s", job.id, decision.reason)
    version = publish_unless_cancelled(store, run / "export", reporter, publish=decision.publish)
    for other in runs.glob("*/checkpoint.pt"):  # one resumable run at a time: the latest
        if other.parent != run:
            other.unlink(missing_ok=True)
    return version, {**metrics, "quality": quality, "live_quality": live_q, "published": decision.publish,
                     "gate": decision.reason, "live_version": None if live is None else live.version,
                     "run": run.name, "train_config": cfg.to_dict()}


def _reindex(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    _configure_threads(settings)
    reporter.phase("loading")
    store = ArtifactStore(settings.artifacts_dir)
    live = store.load()
    device = local_device(settings.train_device)
    encoder, model_cfg = load_model_and_config(live.directory / "model.pt", device)
    pre = Preprocess.load(live.directory / "preprocess.json")
    ds = ImageFolder(settings.collection_root)
    skipped = ds.validate()
    reporter.phase("embedding", images=len(ds))
    if reporter.should_stop():
        raise TrainingCancelled("cancelled before embedding")
    feats = embed_dataset(encoder, ds, pre, device, progress=False).cpu().numpy()
    export = settings.artifacts_dir / "runs" / job.id / "export"
    metrics = {"images": len(ds), "skipped": len(skipped), "model_from": live.version}
    write_export(export, feats, ds, encoder, model_cfg, pre,
                 {"train_config": (live.manifest.get("training") or {}).get("config"), "metrics": metrics})
    try:
        version = publish_unless_cancelled(store, export, reporter)
    finally:
        shutil.rmtree(export.parent, ignore_errors=True)
    return version, metrics
