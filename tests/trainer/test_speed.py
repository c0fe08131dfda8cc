"""trainer/speed.py: the rate a CPU budget is sized by comes from real training steps of the config."""

from __future__ import annotations

import dataclasses
import math

import torch

from trainer.config import TrainConfig
from trainer.speed import training_rate


def test_training_rate_times_real_steps_of_the_config():
    cfg = TrainConfig(arch="airnet", width=8, batch_size=16, objective="softmax", image_size=32)
    threads = torch.get_num_threads()
    rate = training_rate(cfg, 1000, torch.device("cpu"), seconds=0.05, warmup_steps=1, window_steps=2)
    assert math.isfinite(rate) and rate > 0
    assert torch.get_num_threads() == threads  # the caller's threads are what gets timed
    photo = TrainConfig(arch="resnet18", width=8, batch_size=8, objective="nce", negatives=50, image_size=96,
                        stem="imagenet")
    assert training_rate(photo, 60, torch.device("cpu"), seconds=0.05, warmup_steps=1, window_steps=2) > 0


def test_training_rate_orders_configs_by_their_cost():
    """The same net at width 8 and width 64 (about 60x the multiply-adds per image: every conv but the first
    has 8x the input and 8x the output channels): a rate that reflects the config's real steps ranks the
    narrow one well ahead, where a constant or a rate of the wrong config would not."""
    cheap = TrainConfig(arch="airnet", width=8, batch_size=8, objective="softmax", image_size=32)
    costly = dataclasses.replace(cheap, width=64)

    def rate(cfg: TrainConfig) -> float:
        return training_rate(cfg, 1000, torch.device("cpu"), seconds=0.05, warmup_steps=1, window_steps=1)

    # the cheap config measured before and after the costly one, the better of the two kept: load on the
    # machine only ever slows a measurement, so a spike during one of them cannot flip the order
    before = rate(cheap)
    costly_rate = rate(costly)
    cheap_rate = max(before, rate(cheap))
    assert math.isfinite(costly_rate) and costly_rate > 0
    assert cheap_rate >= 1.5 * costly_rate, (cheap_rate, costly_rate)
