"""The training step against the machine's limit: achieved FLOP/s of a real NPID step (forward, backward, SGD,
bank update, the feed's augmentation) beside the FLOP/s of a large matrix multiply on the same cores and threads.

    python bench/flops.py                 # the CPU recipe's configs (trainer/recipe.py), fp32 and bf16 matmul peaks

The step's FLOPs are counted by torch.utils.flop_counter (matmuls and convolutions, forward and backward) on one
step; its rate is trainer/speed.py's median of real steps. A low share says the step is bound by memory, the
augmentation or framework overhead rather than arithmetic: more arithmetic per byte (width, resolution) costs
less than its FLOPs suggest, and fusing (torch.compile) or lower precision is where time could be won.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer_bench import machine  # noqa: E402

from trainer.config import TrainConfig  # noqa: E402
from trainer.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.objective import NPIDObjective  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402
from trainer.recipe import CPU_PHOTO_RECIPE, CPU_RECIPE  # noqa: E402
from trainer.speed import training_rate  # noqa: E402
from trainer.step import Learner, train_step  # noqa: E402


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of n x n @ n x n in `dtype`, the best of repeated runs for `seconds`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def step_flops(cfg: TrainConfig, n_images: int) -> float:
    """FLOPs of one training step of cfg (forward + backward + bank update), per image."""
    pre = Preprocess.for_size(cfg.image_size, CIFAR10_MEAN, CIFAR10_STD)
    learner = Learner(build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem),
                      NPIDObjective(cfg, n_images, torch.Generator().manual_seed(0)))
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0, momentum=cfg.momentum)
    x = pre.device_eval(torch.randint(0, 256, (cfg.batch_size, pre.stored_size, pre.stored_size, 3),
                                      dtype=torch.uint8))
    idx = torch.arange(cfg.batch_size)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(learner, learner.objective, optimizer, x, idx, None, Dist())
    return counter.get_total_flops() / cfg.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000, help="memory-bank rows (the collection size)")
    p.add_argument("--seconds", type=float, default=5.0, help="timing of each config")
    args = p.parse_args()
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    configs = {
        "CPU recipe, 32 px (airnet w16)": TrainConfig(**CPU_RECIPE, objective="softmax", image_size=32, stem="cifar",
                                                      hflip=False, weight_decay=5e-4),
        "CPU photo recipe, 96 px (ResNet-18 w16)": TrainConfig(**CPU_PHOTO_RECIPE, objective="softmax", image_size=96,
                                                               stem="imagenet", hflip=True, weight_decay=1e-4),
        "paper, 32 px (ResNet-18 w64)": TrainConfig(arch="resnet18", width=64, objective="softmax", image_size=32,
                                                    stem="cifar", hflip=False, weight_decay=5e-4),
    }
    print(f"# The training step against the machine's limit\n\nMachine: {machine()}. Command: `python bench/flops.py "
          f"--images {args.images} --seconds {args.seconds:g}`.\n\nLarge matrix multiply (2048^3): fp32 "
          f"{fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s.\n")
    print("| config | batch | MFLOP per image (fwd+bwd) | images/s fp32 | GFLOP/s fp32 (share of fp32 matmul) | "
          "images/s bf16 autocast | GFLOP/s bf16 (share of bf16 matmul) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for name, cfg in configs.items():
        per_image = step_flops(cfg, args.images)
        rate32 = training_rate(cfg, args.images, torch.device("cpu"), seconds=args.seconds)
        rate16 = training_rate(cfg, args.images, torch.device("cpu"), seconds=args.seconds, bf16=True)
        print(f"| {name} | {cfg.batch_size} | {per_image / 1e6:.1f} | {rate32:.0f} | {per_image * rate32 / 1e9:.1f} "
              f"({100 * per_image * rate32 / fp32:.0f}%) | {rate16:.0f} | {per_image * rate16 / 1e9:.1f} "
              f"({100 * per_image * rate16 / bf16:.0f}%) |")


if __name__ == "__main__":
    main()
