"""One training step, profiled on the CPU: no op that waits for the device, and a bounded number of ops."""

from __future__ import annotations

import pytest
import synthetic
import torch
from op_count import SYNC_OPS, all_aten_ops, compute_ops, top_level_aten_ops

from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.train import prepare, run_step

# 667 ops with torch 2.14 (views aside): the batch's augmentation about 210, ResNet-18 forward + backward +
# SGD most of the rest, the NPID part a few dozen; the budget leaves room for other torch versions
STEP_OP_BUDGET = 800


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic.make_folder(tmp_path_factory.mktemp("steps"), per_class=8, size=16)


@pytest.mark.parametrize("changes", [
    dict(objective="nce"),
    dict(objective="nce", shared_negatives=True, z_momentum=0.9),
    dict(objective="softmax", proximal=0.5),
    dict(objective="infonce"),
    dict(objective="parametric"),
])
def test_a_training_step_never_waits_for_the_device(tmp_path, folder, changes):
    cfg = TrainConfig(data=str(folder), image_size=16, width=8, dim=16, batch_size=8, negatives=16,
                      out=str(tmp_path / "run"), progress=False, device="cpu", **changes)
    run = prepare(cfg, torch.device("cpu"), Dist(), resume=False, show=False)
    steps = run.feed.steps(0)
    batches = run.feed.epoch(0)

    def step(i):
        x, idx, global_batch = next(batches)  # the feed's augmentation is part of the step
        return run_step(run, x, idx, global_batch, 0, i, steps)

    step(0)  # the first step estimates Z and builds the optimiser's state
    ops = all_aten_ops(lambda: step(1))
    assert not SYNC_OPS & ops, sorted(SYNC_OPS & ops)
    counts = top_level_aten_ops(lambda: step(2))
    assert compute_ops(counts) <= STEP_OP_BUDGET, (compute_ops(counts), counts.most_common(8))
