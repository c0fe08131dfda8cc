"""Shared vs per-sample NCE noise at reduced scale on the CPU: same run, same seed, one flag apart.

    python bench/shared_negatives_bench.py [--limit 1000] [--epochs 3] [--negatives 80] [--width 8]

Trains NPID-NCE on the first `--limit` CIFAR-10 training images twice, once with m noise ids per sample
(the paper) and once with one set of m ids shared by the batch (`shared_negatives`), with m scaled to
keep the paper's m/n (4096/50,000 ~ 0.08), and reports kNN top-1 (k=200) on test-1k-lossless, the final
loss and the wall time of each. Prints the machine, versions and the command; results in
docs/nce-shared-negatives.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.trainer_bench import machine  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.train import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--negatives", type=int, default=80)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"Machine: {machine()}")
    print(f"Command: python {' '.join(sys.argv)}\n")
    print("| noise | n | m | epochs | kNN top-1 test-1k-lossless | final loss | train time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for shared in (False, True):
            cfg = TrainConfig(data=f"cifar10:{args.cifar}", eval_data=f"cifar10:{args.cifar}", limit=args.limit,
                              objective="nce", negatives=args.negatives, shared_negatives=shared,
                              epochs=args.epochs, width=args.width, milestones=(), seed=args.seed, knn_every=0,
                              device="cpu", progress=False, out=str(Path(tmp) / f"shared{int(shared)}"))
            t = time.perf_counter()
            metrics = train(cfg, resume=False)
            wall = time.perf_counter() - t
            top1 = metrics["knn"]["top1@200"]
            se = 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / 1000)
            print(f"| {'shared by the batch' if shared else 'per sample (paper)'} | {args.limit:,} | "
                  f"{args.negatives} | {args.epochs} | {top1:.1f} (SE {se:.1f}) | {metrics['final_loss']:.3f} | "
                  f"{metrics['train_seconds']:.0f} ({wall:.0f} with evaluation) |", flush=True)


if __name__ == "__main__":
    main()
