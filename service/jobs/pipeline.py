"""What the background jobs do, free of Celery and HTTP: retrain + index + publish, or re-embed + publish.

Only a complete, validated version is ever published: the index is built unpublished, the job checks for
a cancel request and its lease, the promotion gate compares its label-free quality with the live version's
(service/jobs/promotion.py), then `ArtifactStore.publish_rebased` moves CURRENT in one atomic step, carrying the
uploads and deletes made meanwhile. The API's engine picks the new version up by itself (it polls CURRENT).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from index import ArtifactStore, Embed, IndexConfig
from trainer import recipe
from trainer.cache import cached_folder
from trainer.config import TrainConfig
from trainer.distributed import local_device
from trainer.embed import embed_dataset, load_model_and_config, write_export
from trainer.preprocess import Preprocess
from trainer.progress import TrainingCancelled, ticker
from trainer.quality import record_in_export
from trainer.train import train

from ..live.collection import file_embedder
from ..settings import Settings
from .promotion import current_version, decide, export_quality, exported_collection, live_quality
from .reporter import JobReporter, run_job
from .runs import carry_from, runs_dir
from .store import Job, JobStore
from .warmstart import JobRequest, extended_config, warm_start_config

log = logging.getLogger(__name__)

JOB_CHECKPOINTS = 20  # checkpoints over a job's run
JOB_KNN_EVERY = 5  # epochs between kNN monitors of a job (the CLI's default is every epoch)


def training_config(settings: Settings, overrides: dict[str, Any], collection: recipe.CollectionFacts,
                    cuda: bool) -> TrainConfig:
    """The job's TrainConfig: the machine recipe of trainer/recipe.py, as `npid train` decides it, with the
    training config file's fields (NPID_TRAIN_CONFIG) and the request's overrides (`minutes` included) given
    explicitly, and the CPU budget NPID_CPU_TRAIN_MINUTES; then the job's own monitoring and checkpoint cadence."""
    base = file_defaults(settings)
    cfg = recipe.decide({**base, **overrides}, collection, cuda, "machine", settings.cpu_train_minutes)
    # a job whose worker dies resumes from its last checkpoint (POST /jobs/<id>/resume): about 20 per run, and
    # every epoch under a time budget; the writer runs in the background, off the step
    return cfg.replace(knn_every=base.get("knn_every", JOB_KNN_EVERY),
                       checkpoint_every=overrides.get("checkpoint_every", max(1, cfg.epochs // JOB_CHECKPOINTS)))


def file_defaults(settings: Settings) -> dict[str, Any]:
    """The training config file's fields (NPID_TRAIN_CONFIG), or none."""
    return TrainConfig.from_file(settings.train_config).to_dict() if settings.train_config else {}


def publish_unless_cancelled(store: ArtifactStore, export_dir: Path, reporter: JobReporter, carry_from: int,
                             embed: Embed, publish: bool = True) -> str:
    """Index the export, then (unless the gate said no) publish it rebased onto what was published since the job
    began (carry_from: the store's next id then): images added meanwhile are embedded with the new model and
    kept, deletions stay. A version kept back stays in the store, to be published by hand."""
    reporter.phase("indexing")
    version = store.build(export_dir, IndexConfig(), publish=False)
    if reporter.cancel_requested():
        raise TrainingCancelled("cancelled before publishing")
    if not publish:
        return version
    reporter.phase("publishing", version=version)
    reporter.fence()  # only the lock's holder publishes (LeaseLost otherwise)
    return store.publish_rebased(version, carry_from, embed)


def run_train_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Train on the collection, export, build an index, publish. Records the outcome on the job."""
    run_job(jobs, job, lambda reporter: _train(settings, job, reporter), settings.jobs_time_limit_s)


def run_index_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Re-embed the collection with the live model (no training) and publish a new version."""
    run_job(jobs, job, lambda reporter: _reindex(settings, job, reporter), settings.jobs_time_limit_s)


def _configure_threads(settings: Settings, store: ArtifactStore) -> None:
    """Leave the API a core once it serves a version: training takes all but one. Before the first version
    there is nothing to search, and every core shortens the wait for it. NPID_WORKER_THREADS overrides."""
    cores = os.cpu_count() or 2
    serving = store.current_version() is not None
    torch.set_num_threads(settings.worker_threads or (max(1, cores - 1) if serving else cores))


def image_cache_dir(settings: Settings) -> Path:
    """Decoded images (trainer/cache.py) shared by training and re-index jobs, next to the versions."""
    return settings.artifacts_dir / "image-cache"


def job_config(settings: Settings, job: Job, request: JobRequest, store: ArtifactStore, device: torch.device
                ) -> tuple[Path, TrainConfig]:
    """(run folder, config) of a train job: a new run, the job's own run again (POST /jobs/<id>/resume after its
    worker died), or an earlier run continued to more epochs (`"extend": RUN`, the background trainer)."""
    runs = runs_dir(settings.artifacts_dir)
    if job.resume:  # the run's own recipe, so that its checkpoint matches
        return runs / job.id, TrainConfig.from_file(runs / job.id / "config.yaml")
    if request.extend:
        return runs / request.extend, extended_config(runs / request.extend, request.overrides)
    run = runs / job.id
    collection = recipe.collection_of(str(settings.collection_root))
    cfg = training_config(settings, request.overrides, collection, device.type == "cuda")
    cfg = cfg.replace(data=str(settings.collection_root), out=str(run), device=str(device), progress=False,
                      cache_dir=cfg.cache_dir or str(image_cache_dir(settings)),
                      extra={**cfg.extra, "images": collection.images})
    if request.init == "live":
        cfg = warm_start_config(cfg, store, run)
    return run, cfg


def _train(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    reporter.phase("loading")
    request = JobRequest.of(job.params)
    store = ArtifactStore(settings.artifacts_dir)
    _configure_threads(settings, store)
    device = local_device(settings.train_device)  # CUDA is first touched here, inside the task
    run, cfg = job_config(settings, job, request, store, device)
    continuing = job.resume or request.extend is not None
    first_new_id = carry_from(run) if continuing else carry_from(run, store.next_id())
    log.info("job %s: training %s%s", job.id, cfg.to_dict(), " (resumed)" if continuing else "")
    metrics = train(cfg, on_progress=reporter.progress, should_stop=reporter.should_stop, resume=continuing)

    reporter.phase("measuring")
    ds = exported_collection(run / "export", settings.collection_root)
    quality = export_quality(run / "export", ds, device, cfg.flip)
    record_in_export(run / "export", quality)
    live = current_version(store)
    measuring = ticker("measuring", reporter.progress, reporter.should_stop)  # re-embedding by the live model
    live_q = None if live is None else live_quality(live, ds, quality["key"], device, cfg.flip, measuring)
    margin = settings.improve_margin if request.extend else 0.0
    decision = decide(quality, live_q, request.publish, margin)
    log.info("job %s: %s", job.id, decision.reason)
    # the run folder (and its checkpoint) stays: the background trainer continues it; service/jobs/runs.py cleans
    version = publish_unless_cancelled(store, run / "export", reporter, first_new_id,
                                       file_embedder(settings.collection_root, str(device)), decision.publish)
    return version, {**metrics, "quality": quality, "live_quality": live_q, "published": decision.publish,
                     "gate": decision.reason, "live_version": None if live is None else live.version,
                     "run": run.name, "train_config": cfg.to_dict()}


def _reindex(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    reporter.phase("loading")
    store = ArtifactStore(settings.artifacts_dir)
    _configure_threads(settings, store)
    first_new_id = store.next_id()
    live = store.load()
    device = local_device(settings.train_device)
    encoder, model_cfg = load_model_and_config(live.directory / "model.pt", device)
    pre = Preprocess.load(live.directory / "preprocess.json")
    ds = cached_folder(settings.collection_root, pre, image_cache_dir(settings), threads=torch.get_num_threads(),
                       tick=ticker("loading", reporter.progress, reporter.should_stop))
    skipped = ds.skipped
    feats = embed_dataset(encoder, ds, pre, device, progress=False,
                          tick=ticker("embedding", reporter.progress, reporter.should_stop)).cpu().numpy()
    export = runs_dir(settings.artifacts_dir) / job.id / "export"
    metrics = {"images": len(ds), "skipped": len(skipped), "model_from": live.version}
    write_export(export, feats, ds, encoder, model_cfg, pre,
                 {"train_config": (live.manifest.get("training") or {}).get("config"), "metrics": metrics})
    try:
        version = publish_unless_cancelled(store, export, reporter, first_new_id,
                                           file_embedder(settings.collection_root, str(device)))
    finally:
        shutil.rmtree(export.parent, ignore_errors=True)
    return version, metrics
