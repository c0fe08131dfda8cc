"""Reproduce the paper's CIFAR-10 Table 1 (ResNet-18, 128-d; weighted kNN k=200 / linear probe) on one GPU.

    python bench/reproduce_table1.py --objective softmax --epochs 200            # full-softmax row, tau 0.1
    python bench/reproduce_table1.py --objective nce --negatives 4096 --epochs 200 --tau 0.07
    python bench/reproduce_table1.py --smoke                                     # 1 epoch on 2,560 images

Trains on the lossless 50,000 (`--cifar`, the .npz arrays) with the trainer's device-side data path, bf16
autocast and channels_last on CUDA (optionally torch.compile), then writes `<out>/result.json` and
`<out>/result.md`: kNN top-1/top-5 on test-1k-lossless and test-10k-jpeg, linear-probe accuracy,
wall-clock total and per epoch, training images/s next to the plain forward+backward images/s of the same
model and batch (the NPID overhead as a ratio), peak GPU memory, GPU model, library versions.
It runs on the CPU too (for testing at reduced scale: --smoke, --width, --limit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import TrainConfig  # noqa: E402
from trainer.data import ImageFolder, load_cifar10  # noqa: E402
from trainer.distributed import local_device  # noqa: E402
from trainer.embed import embed_dataset, load_model  # noqa: E402
from trainer.evaluate import labels_of  # noqa: E402
from trainer.knn import knn_accuracy  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402
from trainer.probe import linear_probe  # noqa: E402
from trainer.train import train  # noqa: E402

PAPER = {"softmax": (80.8, 75.4), "nce4096": (80.4, 70.2), "nce512": (78.4, 64.3), "nce10": (63.4, 60.2),
         "nce1": (42.5, 44.3), "parametric": (63.0, 60.3)}


def plain_throughput(arch: str, width: int, dim: int, batch: int, device: torch.device, amp: bool,
                     compiled: bool, steps: int = 30) -> float:
    """Images/s of forward+backward+SGD of the same encoder on random input: the floor NPID adds to."""
    torch.manual_seed(0)
    model = build_encoder(arch, dim, 32, width).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step():
        with autocast():
            loss = step_model(x).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - t)


def evaluate(out: Path, cifar: str, jpeg_test: Path | None, device, ks=(200,), tau=0.07) -> dict:
    """kNN on test-1k-lossless and test-10k-jpeg against eval-transform features of the 50,000, + linear probe."""
    encoder = load_model(out / "export" / "model.pt", device)
    pre = Preprocess.load(out / "export" / "preprocess.json")
    train_ds, test1k = load_cifar10(cifar, "train"), load_cifar10(cifar, "test")
    train_f = torch.from_numpy(np.load(out / "export" / "embeddings.npy")).to(device)
    train_y = labels_of(train_ds)[: len(train_f)]  # --limit trains on the first N
    res = {}
    sets = {"test-1k-lossless": test1k}
    if jpeg_test is not None:
        sets["test-10k-jpeg"] = ImageFolder(jpeg_test)
    for name, ds in sets.items():
        workers = min(4, os.cpu_count() or 1) if isinstance(ds, ImageFolder) else 0
        f = embed_dataset(encoder, ds, pre, device, batch_size=1000, workers=workers, progress=False)
        y = labels_of(ds, train_ds)
        res[name] = knn_accuracy(f, y, train_f, train_y, ks, tau)
        res[name]["linear_probe_top1"] = linear_probe(train_f.cpu().numpy(), train_y.numpy(), f.cpu().numpy(),
                                                      y.numpy())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", default="softmax", choices=["softmax", "nce", "infonce", "parametric"])
    p.add_argument("--negatives", type=int, default=4096)
    p.add_argument("--tau", type=float, default=None, help="default: 0.1 for softmax (reference code), else 0.07")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="1 epoch on 2,560 images: checks the whole path")
    p.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--jpeg-test", type=Path, default=ROOT / "data/cifar10-jpeg/test")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.limit = 1, args.limit or 2560
    tau = args.tau or (0.1 if args.objective == "softmax" else 0.07)
    row = args.objective + (str(args.negatives) if args.objective == "nce" else "")
    out = args.out or ROOT / "runs" / f"table1-{row}-{args.epochs}ep"
    device = local_device(args.device)
    # x0.1 at 60% and 80% of training: epochs 120 and 160 of 200, as the paper
    milestones = (int(args.epochs * 0.6), int(args.epochs * 0.8)) if args.epochs >= 5 else ()
    cfg = TrainConfig(data=f"cifar10:{args.cifar}", eval_data=f"cifar10:{args.cifar}", objective=args.objective,
                      negatives=args.negatives, temperature=tau, epochs=args.epochs, batch_size=args.batch,
                      width=args.width, milestones=milestones, hflip=False, limit=args.limit, device=str(device),
                      compile=args.compile, out=str(out), knn_every=max(1, args.epochs // 20), progress=False,
                      data_path="device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(cfg, resume=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epoch_s = [r["epoch_s"] for r in rows]
    train_ips = float(np.median([r["images_per_s"] for r in rows]))
    plain = plain_throughput("resnet18", args.width, 128, args.batch, device, device.type == "cuda", args.compile)
    jpeg = args.jpeg_test if args.jpeg_test.is_dir() else None
    result = {
        "row": row, "paper_knn_top1": PAPER.get(row, (None, None))[0], "paper_linear": PAPER.get(row, (None, None))[1],
        "config": cfg.to_dict(), "eval": evaluate(out, args.cifar, jpeg, device, tau=tau),
        "train_metrics": metrics, "wall_clock_s": wall, "training_s": sum(epoch_s),
        "epoch_s_median": float(np.median(epoch_s)), "train_images_per_s": train_ips,
        "plain_fwd_bwd_images_per_s": plain, "npid_overhead_ratio": plain / train_ips,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "command": "python " + " ".join(sys.argv),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    ev = result["eval"]
    md = ["| row | epochs | kNN top-1 test-1k-lossless | top-5 | kNN top-1 test-10k-jpeg | linear probe (1k) | "
          "paper kNN / linear | training time | img/s (plain fwd+bwd) |", "|" + " --- |" * 9,
          f"| {row} | {args.epochs} | {ev['test-1k-lossless']['top1@200']:.2f} | "
          f"{ev['test-1k-lossless']['top5@200']:.2f} | "
          f"{ev.get('test-10k-jpeg', {}).get('top1@200', float('nan')):.2f} | "
          f"{ev['test-1k-lossless']['linear_probe_top1']:.2f} | "
          f"{result['paper_knn_top1']} / {result['paper_linear']} | "
          f"{result['training_s']:.0f} s ({result['epoch_s_median']:.2f} s/epoch) | "
          f"{train_ips:.0f} ({plain:.0f}, ratio {result['npid_overhead_ratio']:.2f}) |",
          "", f"Device: {result['device']}; peak GPU memory {result['peak_gpu_memory_gib']}; {result['versions']}",
          f"Command: `{result['command']}`"]
    (out / "result.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
