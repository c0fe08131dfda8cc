"""How fast this machine trains a config: the images/s that size a CPU budget, measured where the job runs.

A rate recorded on one machine is wrong on every other (a laptop, a loaded VM, another thread count), so a
job that trains "for about 4 minutes" times a few real training steps of its own config first.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from .config import TrainConfig
from .data import CIFAR10_MEAN, CIFAR10_STD
from .distributed import Dist
from .feed import DeviceFeed
from .model import build_encoder
from .objective import NPIDObjective
from .preprocess import Preprocess
from .train import Learner, step_noise, train_step


def training_rate(cfg: TrainConfig, n_images: int, device: torch.device, seconds: float = 2.0,
                  min_steps: int = 3) -> float:
    """Images/s of cfg's training step (device augmentation from the stored size, forward, backward, SGD,
    bank update over an n_images bank) on random images: one warm-up step, then steps until `seconds` pass
    (at least min_steps). The model is a throwaway with cfg's architecture; torch's thread count is the
    caller's."""
    pre = Preprocess.for_size(cfg.image_size, CIFAR10_MEAN, CIFAR10_STD)
    side = pre.stored_size
    batch = cfg.batch_size
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, side, side, 3), dtype=np.uint8)
    bank = max(n_images, len(images))
    learner = Learner(build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem),
                      NPIDObjective(cfg, bank, torch.Generator().manual_seed(0))).to(device)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0, momentum=cfg.momentum)
    feed = DeviceFeed(images, pre, cfg.augmentation, batch, 0, device, Dist())
    seen, timed, start = 0, 0, None
    for epoch in itertools.count():
        for step, (x, idx, b) in enumerate(feed.epoch(epoch)):
            noise = step_noise(learner.objective, 0, epoch, step, b, Dist())
            train_step(learner, learner.objective, optimizer, x, idx, noise, Dist())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if start is None:  # the warm-up step is not counted
                start = time.perf_counter()
                continue
            seen, timed = seen + b, timed + 1
            elapsed = time.perf_counter() - start
            if timed >= min_steps and elapsed >= seconds:
                return seen / elapsed
    raise AssertionError("itertools.count() ended")
