"""A few NPID steps on a BN-free encoder, run either in one process or under torchrun (gloo).

`python -m torch.distributed.run --nproc_per_node 2 tests/ddp_steps.py OUT` saves, per rank, the losses,
the memory bank and Z after the steps to OUT.rank<r>; tests compare them with `run_steps(Dist())`.
(BatchNorm statistics are per rank under DDP, as in the paper's DataParallel code, so the equality
check uses an encoder without BatchNorm.)
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn as nn

from trainer.config import TrainConfig
from trainer.distributed import Dist, init_from_env, mean_over_ranks
from trainer.feed import DeviceFeed
from trainer.model import Encoder
from trainer.objective import NPIDObjective
from trainer.preprocess import Preprocess
from trainer.step import Learner, step_noise, train_step

N, SIZE, BATCH = 64, 8, 16


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def run_steps(d: Dist, objective_name: str = "nce", steps: int = 3):
    cfg = TrainConfig(data="synthetic", image_size=SIZE, dim=16, objective=objective_name, negatives=8,
                      batch_size=BATCH, proximal=0.5, hflip=True)
    images = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    pre = Preprocess.for_size(SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    feed = DeviceFeed(images, pre, cfg.augmentation, BATCH, seed=0, device=torch.device("cpu"), d=d)
    torch.manual_seed(0)
    objective = NPIDObjective(cfg, N, torch.Generator().manual_seed(1))
    objective.reduce_mean = lambda t: mean_over_ranks(t, d)
    learner = Learner(Encoder(TinyNet(), cfg.dim), objective)
    model = nn.parallel.DistributedDataParallel(learner, broadcast_buffers=False) if d.enabled else learner
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    losses = []
    for step, (x, idx, global_batch) in enumerate(feed.epoch(0)):
        if step == steps:
            break
        noise = step_noise(objective, cfg.seed, 0, step, global_batch, d)
        loss = train_step(model, objective, optimizer, x, idx, noise, d)
        losses.append(mean_over_ranks(loss, d).item())
    return {"losses": losses, "bank": objective.bank.vectors.clone(), "z": objective.z.clone(),
            "head": learner.encoder.head.weight.detach().clone()}


if __name__ == "__main__":
    d = init_from_env(torch.device("cpu"))
    torch.save(run_steps(d, sys.argv[2] if len(sys.argv) > 2 else "nce"), f"{sys.argv[1]}.rank{d.rank}")
