"""Learning-rate schedules as pure functions of (fractional) epoch."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """lr at a fractional epoch: optional linear warm-up, then x0.1 at each milestone or cosine to 0."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)
