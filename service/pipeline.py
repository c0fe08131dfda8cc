"""What the background jobs do, free of Celery and HTTP: retrain + index + publish, or re-embed + publish.

Only a complete, validated version is ever published: the index is built unpublished, the job checks for
a cancel request and its lease, the promotion gate compares its label-free quality with the live version's
(service/promotion.py), then `ArtifactStore.publish_rebased` moves CURRENT in one atomic step, carrying the
uploads and deletes made meanwhile. The API's engine picks the new version up by itself (it polls CURRENT).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from index import ArtifactStore, Embed, IndexConfig
from trainer import policy
from trainer.cache import cached_folder
from trainer.config import TrainConfig
from trainer.data import scan_folder
from trainer.distributed import local_device
from trainer.embed import embed_dataset, load_model_and_config, write_export
from trainer.preprocess import Preprocess
from trainer.quality import record_in_export
from trainer.speed import training_rate
from trainer.train import TrainingCancelled, train

from .collection import file_embedder
from .jobs import Job, JobStore
from .promotion import current_version, decide, export_quality, exported_collection, live_quality
from .reporter import JobReporter, run_job
from .runs import carry_from
from .settings import Settings
from .warmstart import JobRequest, extended_config, warm_start_config

log = logging.getLogger(__name__)

SOFTMAX_MAX_IMAGES = 200_000  # up to here jobs train with the exact softmax (B x n logits per step)

# The CPU recipe (docs/cpu-recipe.md measures each choice at a fixed compute budget). Where it differs from
# the paper: the airnet backbone at width 16 instead of ResNet-18 (about 4x the images per second: at a
# budget of minutes, epochs beat width), the memory bank filled with the network's own embeddings before
# the first step instead of random vectors, batch 32 instead of 128 (4x the steps in the same epochs), a
# cosine schedule sized to the budget instead of 200 epochs with steps.
CPU_RECIPE: dict[str, Any] = {"arch": "airnet", "width": 16, "bank_init": "features", "schedule": "cosine",
                              "batch_size": 32, "lr": 0.03}
# Photos on a CPU (trainer/policy.py: at least 64 px, the ImageNet stem): the recipe measured above is for small
# images; for photos the policy's narrow ResNet-18 keeps the ImageNet stem's 4x cheaper maps (airnet would pay
# the full resolution), with the bank fill, batch and schedule of the CPU recipe.
CPU_PHOTO_RECIPE: dict[str, Any] = {**CPU_RECIPE, "arch": "resnet18", "width": 16}
MAX_CPU_EPOCHS = 50
JOB_CHECKPOINTS = 20  # checkpoints over a job's run

Rate = Callable[[TrainConfig], float]  # training images/s of a config on this machine


def training_config(settings: Settings, overrides: dict[str, Any], n_images: int, cuda: bool,
                    short_side: int | None = None, rate: Rate | None = None) -> TrainConfig:
    """The job's TrainConfig: job_recipe, then on a CPU as many epochs as NPID_CPU_TRAIN_MINUTES buy at `rate`
    (default: trainer/speed.py times a few steps of this very config here, with the caller's torch threads), so
    a first version is live in minutes on any CPU. Epochs set by the file or the request win."""
    base = file_defaults(settings)
    cfg = job_recipe(base, overrides, n_images, cuda, short_side)
    if not cuda and "epochs" not in base and "epochs" not in overrides:
        cfg = fit_cpu_budget(cfg, settings.cpu_train_minutes, n_images, rate)
    # a job whose worker dies resumes from its last checkpoint (POST /jobs/<id>/resume): about 20 per run, at
    # least one per epoch on a short CPU budget; the writer runs in the background, off the step
    return cfg.replace(checkpoint_every=overrides.get("checkpoint_every", max(1, cfg.epochs // JOB_CHECKPOINTS)))


def file_defaults(settings: Settings) -> dict[str, Any]:
    """The training config file's fields (NPID_TRAIN_CONFIG), or none."""
    return TrainConfig.from_file(settings.train_config).to_dict() if settings.train_config else {}


def job_recipe(base: dict[str, Any], overrides: dict[str, Any], n_images: int, cuda: bool,
               short_side: int | None = None) -> TrainConfig:
    """The machine's recipe, then the file's fields (`base`: file_defaults), then overrides; epochs not yet sized.

    With a GPU: the paper's recipe (ResNet-18, 200 epochs). On a CPU: CPU_RECIPE (CPU_PHOTO_RECIPE for photos).
    Collections up to SOFTMAX_MAX_IMAGES use the exact softmax (tau 0.1, Table 1's best row) instead of NCE.
    Resolution, stem and the other "auto" fields come from trainer/policy.py (the collection's median short side).
    """
    recipe: dict[str, Any] = {}
    if not cuda:
        photos = short_side is not None and not policy.is_small(short_side)
        recipe = dict(CPU_PHOTO_RECIPE if photos else CPU_RECIPE)
    if n_images <= SOFTMAX_MAX_IMAGES:  # exact softmax: the paper's best row, and stable on small collections
        recipe.update(objective="softmax", temperature=0.1)
    merged = {**TrainConfig().to_dict(), **recipe, **base, **overrides}
    merged["negatives"] = max(1, min(merged["negatives"], n_images - 1))
    merged["knn_every"] = base.get("knn_every", 5)
    return policy.resolve(TrainConfig.from_dict(merged), short_side, cuda)


def fit_cpu_budget(cfg: TrainConfig, minutes: float, n_images: int, rate: Rate | None) -> TrainConfig:
    """cfg with the epochs that `minutes` of training buy at `rate` (1 to MAX_CPU_EPOCHS), the reason recorded."""
    # timing takes about 1% of a 4-minute budget, at most 2% of a short one
    images_per_s = rate(cfg) if rate else training_rate(cfg, n_images, torch.device("cpu"),
                                                        seconds=min(3.0, minutes * 60 / 50))
    epochs = max(1, min(int(minutes * 60 * images_per_s / max(n_images, 1)), MAX_CPU_EPOCHS))
    reason = (f"{epochs}: {minutes:g} min of training at {images_per_s:.0f} images/s (measured here, "
              f"{torch.get_num_threads()} threads), at most {MAX_CPU_EPOCHS}")
    reasons = {**cfg.extra.get("policy", {}), "epochs": reason}
    return cfg.replace(epochs=epochs, extra={**cfg.extra, "policy": reasons})


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


def _job_config(settings: Settings, job: Job, request: JobRequest, store: ArtifactStore, device: torch.device
                ) -> tuple[Path, TrainConfig]:
    """(run folder, config) of a train job: a new run, the job's own run again (POST /jobs/<id>/resume after its
    worker died), or an earlier run continued to more epochs (`"extend": RUN`, the background trainer)."""
    runs = settings.artifacts_dir / "runs"
    if job.resume:  # the run's own recipe, so that its checkpoint matches
        return runs / job.id, TrainConfig.from_file(runs / job.id / "config.yaml")
    if request.extend:
        return runs / request.extend, extended_config(runs / request.extend, request.overrides)
    run = runs / job.id
    files = scan_folder(settings.collection_root).paths
    short = policy.median_short_side([settings.collection_root / p for p in files])
    cfg = training_config(settings, request.overrides, len(files), device.type == "cuda", short)
    cfg = cfg.replace(data=str(settings.collection_root), out=str(run), device=str(device), progress=False,
                      cache_dir=cfg.cache_dir or str(image_cache_dir(settings)),
                      extra={**cfg.extra, "images": len(files)})
    if request.init == "live":
        cfg = warm_start_config(cfg, store, run)
    return run, cfg


def _train(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    reporter.phase("loading")
    request = JobRequest.of(job.params)
    store = ArtifactStore(settings.artifacts_dir)
    _configure_threads(settings, store)
    device = local_device(settings.train_device)  # CUDA is first touched here, inside the task
    run, cfg = _job_config(settings, job, request, store, device)
    continuing = job.resume or request.extend is not None
    first_new_id = carry_from(run) if continuing else carry_from(run, store.next_id())
    log.info("job %s: training %s%s", job.id, cfg.to_dict(), " (resumed)" if continuing else "")
    metrics = train(cfg, on_progress=reporter.progress, should_stop=reporter.should_stop, resume=continuing)

    reporter.phase("measuring")
    ds = exported_collection(run / "export", settings.collection_root)
    quality = export_quality(run / "export", ds, device)
    record_in_export(run / "export", quality)
    live = current_version(store)
    live_q = None if live is None else live_quality(live, ds, quality["key"], device)
    margin = settings.improve_margin if request.extend else 0.0
    decision = decide(quality, live_q, request.publish, margin)
    log.info("job %s: %s", job.id, decision.reason)
    # the run folder (and its checkpoint) stays: the background trainer continues it; service/runs.py cleans
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
    ds = cached_folder(settings.collection_root, pre, image_cache_dir(settings), threads=torch.get_num_threads())
    skipped = ds.skipped
    reporter.phase("embedding", images=len(ds))
    if reporter.should_stop():
        raise TrainingCancelled("cancelled before embedding")
    feats = embed_dataset(encoder, ds, pre, device, progress=False).cpu().numpy()
    export = settings.artifacts_dir / "runs" / job.id / "export"
    metrics = {"images": len(ds), "skipped": len(skipped), "model_from": live.version}
    write_export(export, feats, ds, encoder, model_cfg, pre,
                 {"train_config": (live.manifest.get("training") or {}).get("config"), "metrics": metrics})
    try:
        version = publish_unless_cancelled(store, export, reporter, first_new_id,
                                           file_embedder(settings.collection_root, str(device)))
    finally:
        shutil.rmtree(export.parent, ignore_errors=True)
    return version, metrics
