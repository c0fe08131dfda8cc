"""How fast this machine trains a config: the images/s of a few real training steps, measured where it runs.

A rate recorded on one machine is wrong on every other (a laptop, a loaded VM, another thread count), so the
benchmarks that compare configs (bench/cpu_recipe.py, bench/flops.py) time them side by side here. Jobs do not
time themselves: a time budget is a deadline (trainer/budget.py).
"""

from __future__ import annotations

import contextlib
import statistics
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
from .step import Learner, step_noise, train_step


def training_rate(cfg: TrainConfig, n_images: int, device: torch.device, seconds: float = 2.0,
                  warmup_steps: int = 3, window_steps: int = 5, bf16: bool = False) -> float:
    """Images/s of cfg's training (device augmentation from the stored size, forward, backward, SGD, bank
    update over an n_images bank) on random images, as an epoch runs it: `warmup_steps` uncounted (first
    calls allocate and pick kernels), then windows of `window_steps` steps until `seconds` pass (at least
    three windows); the median window's rate, so that a passing spike of load moves it little while a
    machine that stays loaded is measured as it is. The model is a throwaway with cfg's architecture;
    torch's thread count is the caller's. bf16: the encoder under bf16 autocast, as `amp` trains it."""
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    pre = Preprocess.for_size(cfg.image_size, CIFAR10_MEAN, CIFAR10_STD)
    side = pre.stored_size
    batch = cfg.batch_size
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, side, side, 3), dtype=np.uint8)
    learner = Learner(build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem),
                      NPIDObjective(cfg, max(n_images, len(images)), torch.Generator().manual_seed(0))).to(device)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0, momentum=cfg.momentum)
    feed = DeviceFeed(images, pre, cfg.augmentation, batch, 0, device, Dist())
    windows: list[float] = []  # images/s of each window
    steps, epoch, start, window_start = 0, 0, time.perf_counter(), 0.0
    while True:
        for step, (x, idx, b) in enumerate(feed.epoch(epoch)):  # the feed's augmentation is part of the time
            noise = step_noise(learner.objective, 0, epoch, step, b, Dist())
            train_step(learner, learner.objective, optimizer, x, idx, noise, Dist(), autocast)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            steps += 1
            now = time.perf_counter()
            if steps == warmup_steps:
                window_start = now
            elif steps > warmup_steps and (steps - warmup_steps) % window_steps == 0:
                windows.append(window_steps * batch / (now - window_start))
                window_start = now
                if len(windows) >= 3 and now - start >= seconds:
                    return statistics.median(windows)
        epoch += 1
