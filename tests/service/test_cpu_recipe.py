"""The jobs' recipe on a CPU: the CPU recipe, sized to the budget; the file and the request still win."""

from __future__ import annotations

from service.pipeline import CPU_IMAGES_PER_S, CPU_RECIPE, MAX_CPU_EPOCHS, training_config
from service.settings import Settings


def settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, collection_root=tmp_path, artifacts_dir=tmp_path, **kw)


def test_cpu_budget_picks_the_cpu_recipe_and_the_epochs_that_fit(tmp_path):
    cfg = training_config(settings(tmp_path, cpu_train_minutes=4), {}, 10_000, cuda=False)
    assert {k: getattr(cfg, k) for k in CPU_RECIPE} == CPU_RECIPE
    assert cfg.epochs == int(4 * 60 * CPU_IMAGES_PER_S / 10_000)
    assert (cfg.objective, cfg.temperature) == ("softmax", 0.1)
    assert training_config(settings(tmp_path), {}, 10, cuda=False).epochs == MAX_CPU_EPOCHS
    half = training_config(settings(tmp_path, cpu_train_minutes=4), {"width": 64}, 10_000, cuda=False)
    assert half.width == 64 and half.epochs == int(4 * 60 * CPU_IMAGES_PER_S / 4 / 10_000)


def test_gpu_keeps_the_paper_recipe_and_requests_override(tmp_path):
    cfg = training_config(settings(tmp_path), {}, 10_000, cuda=True)
    assert (cfg.arch, cfg.epochs, cfg.bank_init) == ("resnet18", 200, "random")
    assert training_config(settings(tmp_path), {"epochs": 3}, 10_000, cuda=False).epochs == 3
