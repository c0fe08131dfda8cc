"""What the background jobs do, free of Celery and HTTP: retrain + index + publish, or re-embed + publish.

Only a complete, validated version is ever published: the index is built unpublished, the job checks for
a cancel request, then `ArtifactStore.publish` moves CURRENT in one atomic step. The API's engine picks the
new version up by itself (it polls CURRENT).
"""

from __future__ import annotations

import logging
import os
import shutil
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
from trainer.train import TrainingCancelled, train

from .collection import file_embedder
from .jobs import Job, JobStore
from .reporter import JobReporter, run_job
from .runs import carry_from
from .settings import Settings

log = logging.getLogger(__name__)

CPU_IMAGES_PER_S = 250.0  # ResNet-18 width 16 at 32 px, one worker thread, with augmentation (docs/jobs-benchmark.md)
SOFTMAX_MAX_IMAGES = 200_000  # up to here jobs train with the exact softmax (B x n logits per step)


def training_config(settings: Settings, overrides: dict[str, Any], n_images: int, cuda: bool,
                    short_side: int | None = None) -> TrainConfig:
    """The job's TrainConfig: file defaults (NPID_TRAIN_CONFIG), then the machine's budget, then overrides.

    With a GPU: the paper's recipe (ResNet-18, 200 epochs). On a CPU: a narrow ResNet-18 and as many
    epochs as fit NPID_CPU_TRAIN_MINUTES, so a first version is live in minutes. Collections up to
    SOFTMAX_MAX_IMAGES use the exact softmax (tau 0.1, Table 1's best row) instead of NCE.
    Resolution and architecture come from trainer/policy.py (the collection's median short side).
    """
    base = TrainConfig.from_file(settings.train_config).to_dict() if settings.train_config else {}
    if cuda:
        budget: dict[str, Any] = {}
    else:
        width = base.get("width", 16)
        epochs = int(settings.cpu_train_minutes * 60 * CPU_IMAGES_PER_S * (16 / width) ** 2 / max(n_images, 1))
        budget = {"width": width, "epochs": max(1, min(epochs, 50)), "schedule": "cosine"}
    if n_images <= SOFTMAX_MAX_IMAGES:  # exact softmax: the paper's best row, and stable on small collections
        budget.update(objective="softmax", temperature=0.1)
    merged = {**TrainConfig().to_dict(), **budget, **base, **overrides}
    merged["negatives"] = max(1, min(merged["negatives"], n_images - 1))
    merged["knn_every"] = base.get("knn_every", 5)
    cfg = policy.resolve(TrainConfig.from_dict(merged), short_side, cuda)
    if not cuda and "epochs" not in {**base, **overrides}:  # the budget was measured at 32 px, CIFAR stem
        cost = policy.cost_per_image(cfg.image_size, cfg.stem)
        cfg = cfg.replace(epochs=max(1, min(int(budget["epochs"] / cost), 50)))
    return cfg


def publish_unless_cancelled(store: ArtifactStore, export_dir: Path, reporter: JobReporter, carry_from: int,
                             embed: Embed) -> str:
    """Index the export, then publish it rebased onto what was published since the job began (carry_from: the
    store's next id then): images added meanwhile are embedded with the new model and kept, deletions stay."""
    reporter.phase("indexing")
    version = store.build(export_dir, IndexConfig(), publish=False)
    if reporter.cancel_requested():
        raise TrainingCancelled("cancelled before publishing")
    reporter.phase("publishing", version=version)
    reporter.fence()  # only the lock's holder publishes (LeaseLost otherwise)
    return store.publish_rebased(version, carry_from, embed)


def run_train_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Train on the collection, export, build an index, publish. Records the outcome on the job."""
    run_job(jobs, job, lambda reporter: _train(settings, job, reporter), settings.jobs_time_limit_s)


def run_index_job(settings: Settings, jobs: JobStore, job: Job) -> None:
    """Re-embed the collection with the live model (no training) and publish a new version."""
    run_job(jobs, job, lambda reporter: _reindex(settings, job, reporter), settings.jobs_time_limit_s)


def _configure_threads(settings: Settings) -> None:
    """Leave the API a core: training takes all but one (NPID_WORKER_THREADS overrides)."""
    threads = settings.worker_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)


def image_cache_dir(settings: Settings) -> Path:
    """Decoded images (trainer/cache.py) shared by training and re-index jobs, next to the versions."""
    return settings.artifacts_dir / "image-cache"


def _train(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    _configure_threads(settings)
    reporter.phase("loading")
    store = ArtifactStore(settings.artifacts_dir)
    device = local_device(settings.train_device)  # CUDA is first touched here, inside the task
    run = settings.artifacts_dir / "runs" / job.id
    if job.resume:  # POST /jobs/<id>/resume: the run's own recipe, so that its checkpoint matches
        cfg = TrainConfig.from_file(run / "config.yaml")
    else:
        files = scan_folder(settings.collection_root).paths
        short = policy.median_short_side([settings.collection_root / p for p in files])
        cfg = training_config(settings, job.params, len(files), device.type == "cuda", short)
    cfg = cfg.replace(data=str(settings.collection_root), out=str(run), device=str(device), progress=False,
                      cache_dir=cfg.cache_dir or str(image_cache_dir(settings)))
    first_new_id = carry_from(run) if job.resume else carry_from(run, store.next_id())
    log.info("job %s: training %s%s", job.id, cfg.to_dict(), " (resumed)" if job.resume else "")
    metrics = train(cfg, on_progress=reporter.progress, should_stop=reporter.should_stop, resume=job.resume)
    version = publish_unless_cancelled(store, run / "export", reporter, first_new_id,
                                       file_embedder(settings.collection_root, str(device)))
    (run / "checkpoint.pt").unlink(missing_ok=True)  # the version holds the model; keep the logs and pictures
    return version, {**metrics, "train_config": cfg.to_dict()}


def _reindex(settings: Settings, job: Job, reporter: JobReporter) -> tuple[str, dict]:
    _configure_threads(settings)
    reporter.phase("loading")
    store = ArtifactStore(settings.artifacts_dir)
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
