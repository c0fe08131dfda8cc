"""The recipe's choices for "auto" fields: decisions from the collection and the hardware, overrides win."""

from __future__ import annotations

import multiprocessing

import numpy as np
import photos
import pytest
import torch
from PIL import Image

from trainer import recipe
from trainer.config import AugmentConfig, TrainConfig
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from trainer.distributed import Dist
from trainer.feed import LoaderFeed
from trainer.model import build_encoder
from trainer.preprocess import Preprocess


def decided(short: int | None, cuda: bool, **fields) -> TrainConfig:
    return recipe.resolve(TrainConfig(**fields), short, cuda)


def test_small_images_keep_their_size_and_the_cifar_recipe():
    cfg = decided(32, cuda=True)
    assert (cfg.image_size, cfg.arch, cfg.stem, cfg.hflip, cfg.weight_decay) == (32, "resnet18", "cifar", False, 5e-4)
    assert decided(45, cuda=False).image_size == 48  # native size, to a multiple of 8


def test_photos_get_the_imagenet_recipe_on_a_gpu_and_a_cpu_size_of_at_least_64():
    gpu = decided(400, cuda=True)
    assert (gpu.image_size, gpu.arch, gpu.width, gpu.stem, gpu.hflip) == (224, "resnet50", 64, "imagenet", True)
    cpu = decided(400, cuda=False)
    assert (cpu.image_size, cpu.arch, cpu.stem, cpu.weight_decay) == (96, "resnet18", "imagenet", 1e-4)
    assert decided(80, cuda=False).image_size == 80 and decided(66, cuda=False).image_size == 66
    assert all(r for r in cpu.extra["policy"].values())  # a reason for every decision


def test_overrides_are_never_replaced():
    cfg = decided(400, cuda=True, image_size=160, arch="resnet34", width=32, stem="cifar", hflip=False,
                  weight_decay=3e-4)
    assert (cfg.image_size, cfg.arch, cfg.width, cfg.stem, cfg.hflip, cfg.weight_decay) == \
        (160, "resnet34", 32, "cifar", False, 3e-4)
    assert "policy" not in cfg.extra


def test_median_short_side_reads_headers_like_numpy(tmp_path):
    rng = np.random.default_rng(0)
    sides = []
    for i in range(31):
        w, h = (int(v) for v in rng.integers(20, 300, 2))
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        sides.append(min(w, h))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = sorted(tmp_path.iterdir())
    assert recipe.median_short_side(files) == int(np.median(sides))
    sampled = recipe.median_short_side(files, seed=1, sample=11)
    assert np.percentile(sides, 10) <= sampled <= np.percentile(sides, 90)


@pytest.mark.parametrize("size", [recipe.SMALL_IMAGE_MAX, recipe.SMALL_IMAGE_MAX + 1])
def test_one_rule_for_stem_preprocessing_and_config(size):
    small = recipe.is_small(size)
    stem_is_cifar = build_encoder("resnet18", 8, size, 8).backbone.conv1.kernel_size == (3, 3)
    pre = Preprocess.for_size(size, IMAGENET_MEAN, IMAGENET_STD)
    assert stem_is_cifar == small == pre.squash == TrainConfig(image_size=size).small_images


def run_loader_epoch(folder: str) -> None:
    ds = ImageFolder(folder)
    pre = Preprocess.for_size(72, IMAGENET_MEAN, IMAGENET_STD)
    feed = LoaderFeed(ds, pre, AugmentConfig(hflip=True), 4, 0, torch.device("cpu"), Dist(), workers=2)
    assert sum(x.shape[0] for x, _, _ in feed.epoch(0)) == 8


def test_pil_loader_runs_inside_a_daemon_process(tmp_path):
    """Celery's prefork children are daemons: the loader must not start worker processes there."""
    folder = photos.make_photo_folder(tmp_path / "p", 8, seed=5, short=(80, 120))
    child = multiprocessing.get_context("fork").Process(target=run_loader_epoch, args=(str(folder),), daemon=True)
    child.start()
    child.join(120)
    assert child.exitcode == 0
