"""The reference's CIFAR recipe (lemniscate.pytorch cifar.py) and a parametric baseline that learns."""

from __future__ import annotations

import math

import pytest
import synthetic
import torch

from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.schedule import lr_at
from trainer.train import prepare, run_step


def reference_cifar_lr(base: float, epoch: int) -> float:
    """lemniscate.pytorch cifar.py adjust_learning_rate, verbatim."""
    lr = base
    if epoch >= 80:
        lr = base * (0.1 ** ((epoch - 80) // 40))
    return lr


def test_step_schedule_is_the_reference_cifar_schedule():
    cfg = TrainConfig(image_size=32)
    for epoch in range(cfg.epochs):
        for frac in (0.0, 0.5, 0.99):
            assert lr_at(cfg, epoch + frac) == pytest.approx(reference_cifar_lr(cfg.lr, epoch), rel=1e-12), epoch
    assert lr_at(cfg, 119.99) == pytest.approx(0.03) and lr_at(cfg, 120) == pytest.approx(0.003)
    assert lr_at(cfg, 160) == pytest.approx(0.0003)


def test_cifar_defaults_are_the_reference_and_photos_the_paper():
    cifar = TrainConfig(image_size=32)
    assert (cifar.tau, cifar.lr, cifar.momentum, cifar.decay, cifar.negatives, cifar.bank_momentum) == (
        0.1, 0.03, 0.9, 5e-4, 4096, 0.5)
    assert cifar.epochs == 200 and cifar.batch_size == 128 and not cifar.flip
    photos = TrainConfig(image_size=224)
    assert (photos.tau, photos.decay, photos.flip) == (0.07, 1e-4, True)
    assert TrainConfig(image_size=32, temperature=0.07).tau == 0.07
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=0.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic.make_folder(tmp_path_factory.mktemp("parametric"), per_class=8, size=16)


def test_parametric_baseline_loss_falls(tmp_path, folder):
    """32 images, 2 steps per epoch, 15 epochs: the n-way cosine classifier learns its instances.

    Before (raw n-way weights on unit features) the logits stayed near 0 and the loss at ln n = 3.47.
    """
    cfg = TrainConfig(data=str(folder), image_size=16, width=8, dim=32, batch_size=16, objective="parametric",
                      lr=0.1, out=str(tmp_path / "run"), progress=False, device="cpu",
                      amp=False)  # fp32 steps, as measured: bf16 steps (amp on CPUs with bf16) are noisier
    run = prepare(cfg, torch.device("cpu"), Dist(), resume=False, show=False)
    seen = []
    for epoch in range(15):
        steps = run.feed.steps(epoch)
        for step, (x, idx, global_batch) in enumerate(run.feed.epoch(epoch)):
            seen.append(run_step(run, x, idx, global_batch, epoch, step, steps))
    seen = torch.stack(seen).tolist()
    first, last = sum(seen[:6]) / 6, sum(seen[-6:]) / 6
    assert last < first - 1.0, seen
    assert last < math.log(32), seen
