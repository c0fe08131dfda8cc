"""A job worker changes torch's thread count between jobs in one process (all cores for a first version, all
but one after): training must go on. With channels_last encoders on the CPU it hung in oneDNN (torch 2.14.1);
the test runs in a child process so that a hang fails it instead of stalling the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import torch
    from trainer.config import TrainConfig
    from trainer.distributed import Dist
    from trainer.model import build_encoder
    from trainer.objective import NPIDObjective
    from trainer.step import Learner, train_step

    cfg = TrainConfig(arch="resnet18", width=4, dim=8, objective="softmax", batch_size=4, image_size=96)
    learner = Learner(build_encoder("resnet18", 8, 96, 4, "imagenet"), NPIDObjective(cfg, 16))
    opt = torch.optim.SGD(learner.parameters(), lr=0.01)
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        train_step(learner, learner.objective, opt, torch.randn(4, 3, 96, 96), torch.arange(4), None, Dist())
    print("done")
""")


def test_training_goes_on_after_the_thread_count_changes():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "done"
