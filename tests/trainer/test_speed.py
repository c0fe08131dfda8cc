"""trainer/speed.py: the rate a CPU budget is sized by comes from real training steps of the config."""

from __future__ import annotations

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
