"""The jobs' recipe on a CPU: the CPU recipe, sized to the budget at the measured rate; the file and the request
still win."""

from __future__ import annotations

from service.pipeline import CPU_PHOTO_RECIPE, CPU_RECIPE, MAX_CPU_EPOCHS, training_config
from service.settings import Settings
from trainer.config import TrainConfig


def settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, collection_root=tmp_path, artifacts_dir=tmp_path, **kw)


def test_cpu_budget_picks_the_cpu_recipe_and_the_epochs_the_measured_rate_buys(tmp_path):
    timed = []

    def rate(cfg: TrainConfig) -> float:
        timed.append(cfg)
        return 400.0 if cfg.width == CPU_RECIPE["width"] else 100.0

    cfg = training_config(settings(tmp_path, cpu_train_minutes=4), {}, 10_000, cuda=False, rate=rate)
    assert {k: getattr(cfg, k) for k in CPU_RECIPE} == CPU_RECIPE
    assert timed[-1].arch == "airnet" and timed[-1].batch_size == 32  # the final config is what gets timed
    assert cfg.epochs == int(4 * 60 * 400 / 10_000)
    assert "400 images/s" in cfg.extra["policy"]["epochs"]  # the reason travels with the run
    assert (cfg.objective, cfg.temperature) == ("softmax", 0.1)
    assert training_config(settings(tmp_path), {}, 10, cuda=False, rate=rate).epochs == MAX_CPU_EPOCHS
    wide = training_config(settings(tmp_path, cpu_train_minutes=4), {"width": 64}, 10_000, cuda=False, rate=rate)
    assert wide.width == 64 and timed[-1].width == 64 and wide.epochs == int(4 * 60 * 100 / 10_000)
    assert training_config(settings(tmp_path, cpu_train_minutes=0.01), {}, 10_000, cuda=False, rate=rate).epochs == 1
    photo = training_config(settings(tmp_path), {}, 5000, cuda=False, short_side=300, rate=rate)
    assert (photo.arch, photo.width, photo.image_size) == (CPU_PHOTO_RECIPE["arch"], 16, 96)
    assert (timed[-1].image_size, timed[-1].stem) == (96, "imagenet")


def test_gpu_keeps_the_paper_recipe_and_requests_override(tmp_path):
    def never(cfg: TrainConfig) -> float:
        raise AssertionError("epochs were given: nothing to time")

    cfg = training_config(settings(tmp_path), {}, 10_000, cuda=True, rate=never)
    assert (cfg.arch, cfg.epochs, cfg.bank_init) == ("resnet18", 200, "random")
    assert training_config(settings(tmp_path), {"epochs": 3}, 10_000, cuda=False, rate=never).epochs == 3
