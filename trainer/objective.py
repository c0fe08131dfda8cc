"""The stateful side of NPID: memory bank, normaliser Z, noise ids; the maths lives in `losses`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from . import losses
from .bank import MemoryBank
from .config import TrainConfig


class NPIDObjective(nn.Module):
    """Loss of a batch given its embeddings; owns the bank (and the n-way weights of the baseline)."""

    def __init__(self, cfg: TrainConfig, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.n = n
        self.bank = MemoryBank(n, cfg.dim, cfg.bank_momentum, generator)
        self.register_buffer("z", torch.zeros(()))  # 0 until estimated from the first batch
        if cfg.objective == "parametric":
            self.classifier = nn.Linear(cfg.dim, n, bias=False)
        # averages a scalar over data-parallel ranks; identity in one process
        self.reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    @property
    def needs_noise(self) -> bool:
        return self.cfg.objective in ("nce", "infonce")

    def draw_noise(self, batch: int, g: torch.Generator, device) -> torch.Tensor:
        """Uniform noise ids, batch x m (P_n = 1/n); the same generator state gives the same ids on every rank."""
        return torch.randint(self.n, (batch, self.cfg.negatives), generator=g, device=device)

    def forward(self, f: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """f: BxD unit embeddings, idx: B instance ids, noise: Bxm -> scalar loss (fp32)."""
        cfg, bank = self.cfg, self.bank.vectors
        if cfg.objective == "softmax":
            loss = losses.full_softmax_loss(f, bank, idx, cfg.temperature)
        elif cfg.objective == "parametric":
            loss = losses.parametric_softmax_loss(f, self.classifier.weight, idx)
        else:
            pos, neg = losses.pos_neg_logits(f, bank, idx, noise, cfg.temperature)
            if cfg.objective == "infonce":
                loss = losses.infonce_loss(pos, neg)
            else:
                self._update_z(neg.detach())
                loss = losses.nce_loss(pos, neg, self.z, self.n)
        if cfg.proximal > 0 and cfg.objective != "parametric":
            loss = loss + losses.proximal_term(f, bank[idx], cfg.proximal)
        return loss

    @torch.no_grad()
    def _update_z(self, neg: torch.Tensor) -> None:
        """Z fixed after the first batch (paper), or a running average when z_momentum > 0."""
        if self.z > 0 and self.cfg.z_momentum == 0:
            return
        z_batch = self.reduce_mean(losses.estimate_z(neg, self.n))
        zm = self.cfg.z_momentum
        self.z.copy_(z_batch if self.z == 0 else zm * self.z + (1 - zm) * z_batch)

    @torch.no_grad()
    def update_bank(self, idx: torch.Tensor, f: torch.Tensor) -> None:
        self.bank.update(idx, f)
