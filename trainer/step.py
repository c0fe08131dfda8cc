"""One NPID training step, shared by the training loop (trainer/train.py) and the machine timing
(trainer/speed.py): the encoder and the objective as one module, the noise ids of a step, and the SGD step with
its memory-bank update."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .distributed import Dist, all_gather_cat
from .feed import mix_seed
from .model import Encoder
from .objective import NPIDObjective


class Learner(nn.Module):
    """Encoder + objective in one module, so one DDP wrapper and one state_dict hold everything."""

    def __init__(self, encoder: Encoder, objective: NPIDObjective):
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None):
        f = self.encoder(x)  # B x D unit, fp32
        return self.objective(f, idx, noise), f


def step_noise(objective: NPIDObjective, seed: int, epoch: int, step: int, global_batch: int,
               d: Dist) -> torch.Tensor | None:
    """This rank's noise ids: every rank draws the same global B x m ids and takes its rows (shared: all m)."""
    if not objective.needs_noise:
        return None
    device = objective.bank.vectors.device
    g = torch.Generator(device=device).manual_seed(mix_seed(seed, epoch, step, 4))
    noise = objective.draw_noise(global_batch, g, device)  # B x m, or m when shared
    if noise.dim() == 1:
        return noise
    b = global_batch // d.world
    return noise[d.rank * b:(d.rank + 1) * b]  # b x m


def train_step(step_model: nn.Module, objective: NPIDObjective, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None, d: Dist,
               autocast=contextlib.nullcontext) -> torch.Tensor:
    """One SGD step on this rank's slice, then the same bank update on every rank. -> detached loss."""
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)  # the encoder's layout on a GPU (see prepare)
    with autocast():
        loss, f = step_model(x, idx, noise)  # f: b x D
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    objective.update_bank(all_gather_cat(idx, d), all_gather_cat(f.detach(), d))  # B ids, B x D
    return loss.detach()
