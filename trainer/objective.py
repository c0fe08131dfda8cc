"""The stateful side of NPID: memory bank, normaliser Z, noise ids; the maths lives in `losses`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from . import losses
from .bank import MemoryBank
from .config import SAMPLED_OBJECTIVES, TrainConfig


class NPIDObjective(nn.Module):
    """Loss of a batch given its embeddings; owns the bank (and the n-way weights of the baseline).

    Whether Z has been estimated is a Python flag (`z_ready`), not a test of the `z` buffer, so the step
    never reads a device value back; loading a state dict sets the flag from the loaded buffer.
    """

    def __init__(self, cfg: TrainConfig, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.n = n
        self.bank = MemoryBank(n, cfg.dim, cfg.bank_momentum, generator)
        self.register_buffer("z", torch.zeros(()))  # 0 until estimated from the first batch
        self.z_ready = False
        if cfg.objective == "parametric":
            self.classifier = nn.Linear(cfg.dim, n, bias=False)
        # averages a scalar over data-parallel ranks; identity in one process
        self.reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
        self.register_load_state_dict_post_hook(lambda module, keys: module._z_loaded())

    @property
    def needs_noise(self) -> bool:
        return self.cfg.objective in SAMPLED_OBJECTIVES

    def draw_noise(self, batch: int, g: torch.Generator, device) -> torch.Tensor:
        """Uniform noise ids (P_n = 1/n): batch x m, or m shared by the batch (cfg.shared_negatives).

        The same generator state gives the same ids on every rank.
        """
        shape = (self.cfg.negatives,) if self.cfg.shared_negatives else (batch, self.cfg.negatives)
        return torch.randint(self.n, shape, generator=g, device=device)

    def forward(self, f: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """f: BxD unit embeddings, idx: B instance ids, noise: Bxm or m -> scalar loss (fp32)."""
        cfg, bank = self.cfg, self.bank.vectors
        if cfg.objective == "softmax":
            loss = losses.full_softmax_loss(f, bank, idx, cfg.tau)
        elif cfg.objective == "parametric":
            loss = losses.parametric_softmax_loss(f, self.classifier.weight, idx, cfg.tau)
        else:
            pos, neg = losses.pos_neg_logits(f, bank, idx, noise, cfg.tau)
            if cfg.objective == "infonce":
                loss = losses.infonce_loss(pos, neg)
            else:
                self._update_z(neg.detach())
                loss = losses.nce_loss(pos, neg, self.z, self.n)
        if cfg.proximal > 0 and cfg.objective != "parametric":
            loss = loss + losses.proximal_term(f, bank.index_select(0, idx), cfg.proximal)
        return loss

    @torch.no_grad()
    def _update_z(self, neg: torch.Tensor) -> None:
        """Z fixed after the first batch (paper), or a running average when z_momentum > 0."""
        zm = self.cfg.z_momentum
        if self.z_ready and zm == 0:
            return
        z_batch = self.reduce_mean(losses.estimate_z(neg, self.n))
        self.z.copy_(torch.lerp(z_batch, self.z, zm) if self.z_ready else z_batch)
        self.z_ready = True

    def _z_loaded(self) -> None:
        self.z_ready = bool(self.z > 0)  # one read at load time, never in the step

    @torch.no_grad()
    def update_bank(self, idx: torch.Tensor, f: torch.Tensor) -> None:
        self.bank.update(idx, f)
