"""The jobs' recipe on a CPU: the CPU recipe, sized to the budget at the measured rate; the file and the request
still win; `npid train` decides the same recipe as a job."""

from __future__ import annotations

import dataclasses

import synthetic
import torch

from index import ArtifactStore
from service import cli
from service.jobs.pipeline import job_config, training_config
from service.jobs.store import Job
from service.jobs.warmstart import JobRequest
from service.settings import Settings
from trainer.config import TrainConfig
from trainer.recipe import CPU_PHOTO_RECIPE, CPU_RECIPE, MAX_CPU_EPOCHS, CollectionFacts


def settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, collection_root=tmp_path, artifacts_dir=tmp_path, **kw)


def test_cpu_budget_picks_the_cpu_recipe_and_the_epochs_the_measured_rate_buys(tmp_path):
    timed = []

    def rate(cfg: TrainConfig) -> float:
        timed.append(cfg)
        return 400.0 if cfg.width == CPU_RECIPE["width"] else 100.0

    cfg = training_config(settings(tmp_path, cpu_train_minutes=4), {}, CollectionFacts(10_000, None), cuda=False,
                          rate=rate)
    assert {k: getattr(cfg, k) for k in CPU_RECIPE} == CPU_RECIPE
    assert timed[-1].arch == "airnet" and timed[-1].batch_size == 32  # the final config is what gets timed
    assert cfg.epochs == int(4 * 60 * 400 / 10_000)
    assert "400 images/s" in cfg.extra["policy"]["epochs"]  # the reason travels with the run
    assert (cfg.objective, cfg.temperature) == ("softmax", 0.1)
    few = training_config(settings(tmp_path), {}, CollectionFacts(10, None), cuda=False, rate=rate)
    assert few.epochs == MAX_CPU_EPOCHS
    wide = training_config(settings(tmp_path, cpu_train_minutes=4), {"width": 64}, CollectionFacts(10_000, None),
                           cuda=False, rate=rate)
    assert wide.width == 64 and timed[-1].width == 64 and wide.epochs == int(4 * 60 * 100 / 10_000)
    assert training_config(settings(tmp_path, cpu_train_minutes=0.01), {}, CollectionFacts(10_000, None), cuda=False,
                           rate=rate).epochs == 1
    photo = training_config(settings(tmp_path), {}, CollectionFacts(5000, 300), cuda=False, rate=rate)
    assert (photo.arch, photo.width, photo.image_size) == (CPU_PHOTO_RECIPE["arch"], 16, 96)
    assert (timed[-1].image_size, timed[-1].stem) == (96, "imagenet")


def test_gpu_keeps_the_paper_recipe_and_requests_override(tmp_path):
    def never(cfg: TrainConfig) -> float:
        raise AssertionError("epochs were given: nothing to time")

    cfg = training_config(settings(tmp_path), {}, CollectionFacts(10_000, None), cuda=True, rate=never)
    assert (cfg.arch, cfg.epochs, cfg.bank_init) == ("resnet18", 200, "random")
    pinned = training_config(settings(tmp_path), {"epochs": 3}, CollectionFacts(10_000, None), cuda=False, rate=never)
    assert pinned.epochs == 3


# fields that say where and how a run is kept, not how it learns
RUN_KEEPING = {"data", "out", "device", "progress", "cache_dir", "checkpoint_every", "knn_every", "extra"}


def test_npid_train_and_a_job_on_the_same_folder_record_the_same_recipe(tmp_path):
    folder = synthetic.make_folder(tmp_path / "images", per_class=10, size=32)
    minutes = 0.0002  # both budgets buy a single epoch: the comparison does not wait on two timings agreeing
    assert cli.main(["train", str(folder), "--minutes", str(minutes), "--out", str(tmp_path / "cli"),
                     "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    from_cli = TrainConfig.from_file(tmp_path / "cli" / "config.yaml")

    s = settings(tmp_path, cpu_train_minutes=minutes).model_copy(update={"collection_root": folder})
    job = Job(id="0123456789ab", kind="train")
    _, from_job = job_config(s, job, JobRequest.of({}), ArtifactStore(tmp_path / "artifacts"), torch.device("cpu"))

    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_KEEPING]
    assert {f: getattr(from_cli, f) for f in fields} == {f: getattr(from_job, f) for f in fields}
    assert from_cli.extra["recipe"] == from_job.extra["recipe"] == "cpu"
    assert (from_cli.arch, from_cli.width, from_cli.objective, from_cli.epochs) == ("airnet", 16, "softmax", 1)
    assert from_cli.extra["policy"].keys() == from_job.extra["policy"].keys()  # the same decisions, with reasons
