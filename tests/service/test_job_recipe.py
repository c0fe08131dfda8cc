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
from trainer.recipe import CPU_PHOTO_RECIPE, CPU_RECIPE, CollectionFacts


def settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, collection_root=tmp_path, artifacts_dir=tmp_path, **kw)


def test_a_cpu_job_trains_the_cpu_recipe_for_its_time_budget(tmp_path):
    cfg = training_config(settings(tmp_path, cpu_train_minutes=4), {}, CollectionFacts(10_000, None), cuda=False)
    assert {k: getattr(cfg, k) for k in CPU_RECIPE} == CPU_RECIPE
    assert (cfg.minutes, cfg.epochs) == (4, 0)  # a deadline, as many epochs as it buys: no cap
    assert "4: the CPU budget" in cfg.extra["policy"]["minutes"]  # the reason travels with the run
    assert (cfg.objective, cfg.temperature) == ("softmax", 0.1)
    asked = training_config(settings(tmp_path), {"minutes": 30, "width": 64}, CollectionFacts(10_000, None),
                            cuda=False)
    assert (asked.minutes, asked.epochs, asked.width) == (30, 0, 64)  # the request's budget and fields win
    capped = training_config(settings(tmp_path), {"epochs": 3}, CollectionFacts(10_000, None), cuda=False)
    assert (capped.minutes, capped.epochs) == (4, 3)  # given epochs cap the budget
    photo = training_config(settings(tmp_path), {}, CollectionFacts(5000, 300), cuda=False)
    assert (photo.arch, photo.width, photo.image_size, photo.stem) == (CPU_PHOTO_RECIPE["arch"], 16, 96, "imagenet")


def test_gpu_keeps_the_paper_recipe_and_a_budget_when_asked(tmp_path):
    cfg = training_config(settings(tmp_path), {}, CollectionFacts(10_000, None), cuda=True)
    assert (cfg.arch, cfg.epochs, cfg.bank_init, cfg.minutes) == ("resnet18", 200, "random", 0)
    timed = training_config(settings(tmp_path), {"minutes": 10}, CollectionFacts(10_000, None), cuda=True)
    assert (timed.minutes, timed.epochs) == (10, 0)


# fields that say where and how a run is kept, not how it learns
RUN_KEEPING = {"data", "out", "device", "progress", "cache_dir", "checkpoint_every", "knn_every", "extra"}


def test_npid_train_and_a_job_on_the_same_folder_record_the_same_recipe(tmp_path):
    folder = synthetic.make_folder(tmp_path / "images", per_class=10, size=32)
    minutes = 0.002  # a deadline of a tenth of a second: the comparison is of the recipe, not of the training
    assert cli.main(["train", str(folder), "--minutes", str(minutes), "--out", str(tmp_path / "cli"),
                     "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    from_cli = TrainConfig.from_file(tmp_path / "cli" / "config.yaml")

    s = settings(tmp_path, cpu_train_minutes=minutes).model_copy(update={"collection_root": folder})
    job = Job(id="0123456789ab", kind="train")
    _, from_job = job_config(s, job, JobRequest.of({}), ArtifactStore(tmp_path / "artifacts"), torch.device("cpu"))

    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_KEEPING]
    assert {f: getattr(from_cli, f) for f in fields} == {f: getattr(from_job, f) for f in fields}
    assert from_cli.extra["recipe"] == from_job.extra["recipe"] == "cpu"
    assert (from_cli.arch, from_cli.width, from_cli.objective, from_cli.minutes) == ("airnet", 16, "softmax", minutes)
    assert from_cli.extra["policy"].keys() == from_job.extra["policy"].keys()  # the same decisions, with reasons


def test_what_cannot_run_well_is_brought_within_reach_with_the_reason(tmp_path):
    """A contract fuzzer's request on 300 images of 32 px: a batch of 610 and 154 px with the small-image stem."""
    cfg = training_config(settings(tmp_path), {"objective": "softmax", "batch_size": 610, "image_size": 154,
                                               "stem": "cifar"}, CollectionFacts(300, 32), cuda=False)
    assert cfg.batch_size == 300 and "at most the collection's 300 images" in cfg.extra["policy"]["batch_size"]
    assert cfg.image_size == 64 and "far above the images' own 32 px" in cfg.extra["policy"]["image_size"]
    photos = training_config(settings(tmp_path), {"image_size": 154}, CollectionFacts(300, 400), cuda=False)
    assert photos.image_size == 154 and "batch_size" not in photos.extra["policy"]  # nothing out of reach
