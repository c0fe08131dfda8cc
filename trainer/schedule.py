"""Learning-rate schedules as pure functions of the position in the run: a (fractional) epoch, or, for a run with
a time budget, the fraction of the budget spent (budgeted training: the whole schedule fits the budget)."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """lr at a fractional epoch of `cfg.schedule_epochs`: optional linear warm-up, then x0.1 at each milestone or
    cosine to 0."""
    epochs = cfg.schedule_epochs
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        progress = (epoch - cfg.warmup_epochs) / max(epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


def lr_at_fraction(cfg: TrainConfig, fraction: float) -> float:
    """lr once `fraction` (0..1) of the run is done: the same schedule, stretched over the budget."""
    return lr_at(cfg, min(max(fraction, 0.0), 1.0) * cfg.schedule_epochs)
