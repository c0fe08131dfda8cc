"""The memory bank: one unit vector per instance, updated by momentum after each step."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MemoryBank(nn.Module):
    """n x d unit vectors in a persistent buffer (so .to(), state_dict() and resume just work)."""

    def __init__(self, n: int, dim: int, momentum: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if n < 1 or dim < 1:
            raise ValueError(f"memory bank needs n >= 1 and dim >= 1 (got {n}, {dim})")
        self.momentum = momentum
        self.register_buffer("vectors", F.normalize(torch.randn(n, dim, generator=generator), dim=1))

    @property
    def n(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def update(self, idx: torch.Tensor, features: torch.Tensor) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for the batch's rows (distinct ids).  idx: B, features: B x D."""
        mixed = torch.lerp(features.float(), self.vectors.index_select(0, idx), self.momentum)  # B x D
        self.vectors.index_copy_(0, idx, F.normalize(mixed, dim=1))
