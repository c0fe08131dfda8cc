"""Trainer benchmarks; results go to docs/trainer-benchmark.md.

    python bench/trainer_bench.py step-cost   # encoder fwd+bwd vs the NPID part, n=50,000 and 1,281,167
    python bench/trainer_bench.py throughput  # training images/s: fp32 vs bf16 autocast vs torch.compile
    python bench/trainer_bench.py cifar-cpu   # a CIFAR-10 run that fits 30 CPU minutes, vs random init and pixels
    python bench/trainer_bench.py layout      # encoder step images/s: NCHW vs channels_last

Each mode prints a markdown table with the machine, library versions and the command line. Timings are
medians of repeated runs measured side by side in one process, so ratios are meaningful on a noisy,
shared machine even where absolute numbers move.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer import losses  # noqa: E402
from trainer.bank import MemoryBank  # noqa: E402
from trainer.config import AugmentConfig, TrainConfig  # noqa: E402
from trainer.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolder, load_cifar10  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.embed import embed_dataset  # noqa: E402
from trainer.feed import DeviceFeed  # noqa: E402
from trainer.knn import knn_accuracy  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.objective import NPIDObjective  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402
from trainer.step import Learner, step_noise, train_step  # noqa: E402
from trainer.train import train  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; python {platform.python_version()}")


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds of fn() over reps runs (after warm-up)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def npid_part(f0: torch.Tensor, bank: MemoryBank, idx: torch.Tensor, z: torch.Tensor, m: int) -> None:
    """Everything NPID adds to a step: noise ids, bank gather, logits, NCE loss + its backward, bank update."""
    f = f0.clone().requires_grad_()  # B x D, stands in for the encoder output
    noise = torch.randint(bank.n, (len(idx), m))  # B x m
    pos, neg = losses.pos_neg_logits(f, bank.vectors, idx, noise, 0.07)  # B, B x m
    losses.nce_loss(pos, neg, z, bank.n).backward()
    bank.update(idx, f.detach())


def step_cost(args) -> str:
    """Per-step cost split for a ResNet-18 CIFAR step: encoder forward+backward vs the NPID part."""
    torch.manual_seed(0)
    b, d, m = args.batch, 128, 4096
    encoder = build_encoder("resnet18", d, 32, 64)
    x = torch.randn(b, 3, 32, 32)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.01)

    def encoder_step():
        opt.zero_grad()
        encoder(x).sum().backward()
        opt.step()

    t_enc = timed(encoder_step, args.reps)
    rows = []
    for n in (50_000, 1_281_167):
        bank = MemoryBank(n, d)
        f0 = F.normalize(torch.randn(b, d), dim=1)
        idx = torch.randperm(n)[:b]
        z = torch.tensor(float(n))

        t_npid = timed(functools.partial(npid_part, f0, bank, idx, z, m), args.reps * 3)
        rows.append((n, t_npid))
    lines = [f"| encoder fwd+bwd+SGD (ResNet-18, 32 px, batch {b}) | {t_enc * 1e3:.0f} ms | 100% |"]
    for n, t in rows:
        lines.append(f"| NPID part, n={n:,}, m={m}, d={d}: noise, gather, logits, NCE loss+backward, bank update "
                     f"| {t * 1e3:.1f} ms | {100 * t / t_enc:.1f}% |")
    return "| part | median time per step | share of encoder step |\n| --- | --- | --- |\n" + "\n".join(lines)


def throughput(args) -> str:
    """Training images/s of the real train_step on device-augmented CIFAR batches, three ways."""
    ds = load_cifar10(args.cifar, "train")
    images = ds.images[: args.batch * (args.reps + 2)]
    pre = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)
    results = []
    for name, amp, compiled in (("fp32", False, False), ("bf16 autocast", True, False),
                                ("torch.compile (fp32)", False, True)):
        torch.manual_seed(0)
        cfg = TrainConfig(data="bench", width=args.width, batch_size=args.batch, negatives=4096)
        objective = NPIDObjective(cfg, len(images))
        learner = Learner(build_encoder("resnet18", cfg.dim, 32, args.width), objective)
        model = torch.compile(learner) if compiled else learner
        opt = torch.optim.SGD(learner.parameters(), lr=0.03, momentum=0.9)
        feed = DeviceFeed(images, pre, AugmentConfig(), args.batch, 0, torch.device("cpu"), Dist())
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        times = []
        for step, (x, idx, global_batch) in enumerate(feed.epoch(0)):
            t = time.perf_counter()
            train_step(model, objective, opt, x, idx, step_noise(objective, 0, 0, step, global_batch, Dist()),
                       Dist(), autocast)
            times.append(time.perf_counter() - t)
        results.append((name, args.batch / statistics.median(times[2:])))
    base = results[0][1]
    lines = [f"| {name} | {ips:.0f} | {ips / base:.2f}x |" for name, ips in results]
    head = (f"ResNet-18 width {args.width} (CIFAR stem), batch {args.batch}, NCE m=4096, n={len(images)}; "
            f"median of {args.reps} steps after 2 warm-up steps (augmentation excluded)\n\n")
    return head + "| variant | images/s | vs fp32 |\n| --- | --- | --- |\n" + "\n".join(lines)


def cifar_cpu(args) -> str:
    """Train on the lossless 50,000; kNN on test-10k-jpeg vs the same network at random init and raw pixels."""
    test = ImageFolder(Path(args.jpeg) / "test")
    cfg = TrainConfig(data=f"cifar10:{args.cifar}", eval_data=str(Path(args.jpeg) / "test"), width=args.width,
                      epochs=args.epochs, batch_size=128, objective=args.objective, temperature=args.tau,
                      negatives=4096, schedule="cosine", knn_every=args.knn_every, out=args.out,
                      progress=False, lr=args.lr, limit=args.limit)
    t0 = time.perf_counter()
    metrics = train(cfg, resume=False)
    minutes = (time.perf_counter() - t0) / 60
    pre = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)
    train_ds = load_cifar10(args.cifar, "train")
    if args.limit:  # the same first N images the run trained on
        train_ds.images = train_ds.images[: args.limit]
        train_ds.collection.labels = train_ds.collection.labels[: args.limit]
    train_y, test_y = torch.from_numpy(train_ds.collection.labels), torch.from_numpy(test.collection.labels)
    torch.manual_seed(0)
    random_net = build_encoder("resnet18", cfg.dim, 32, args.width)
    rand = knn_accuracy(embed_dataset(random_net, test, pre, "cpu", progress=False), test_y,
                        embed_dataset(random_net, train_ds, pre, "cpu", progress=False), train_y, (200,), 0.07)

    def pixels(ds) -> torch.Tensor:
        arr = np.stack([np.asarray(ds.load(i), dtype=np.float32) for i in range(len(ds))])  # N x 32 x 32 x 3
        x = torch.from_numpy(arr.reshape(len(ds), -1))
        return F.normalize(x - x.mean(1, keepdim=True), dim=1)

    raw = knn_accuracy(pixels(test), test_y, pixels(train_ds), train_y, (200,), 0.07)
    (Path(args.out) / "baselines.json").write_text(json.dumps({"random_init": rand, "raw_pixels": raw}, indent=2))
    k = metrics["knn"]
    return (f"{cfg.epochs} epochs, ResNet-18 width {args.width}, {args.objective} (tau {args.tau}, cosine lr "
            f"{args.lr}), batch 128, trained on the first {len(train_y):,} lossless training images in "
            f"{minutes:.1f} min (incl. evaluation); kNN keys: those images' features\n\n"
            "| features (test-10k-jpeg, k=200) | kNN top-1 | kNN top-5 | 1-NN |\n| --- | --- | --- | --- |\n"
            f"| raw pixels (centred, L2-normalised) | {raw['top1@200']:.2f} | {raw['top5@200']:.2f} | "
            f"{raw['nn1']:.2f} |\n"
            f"| same network at random init | {rand['top1@200']:.2f} | {rand['top5@200']:.2f} | {rand['nn1']:.2f} |\n"
            f"| NPID trained | {k['top1@200']:.2f} | {k['top5@200']:.2f} | {k['nn1']:.2f} |\n\n"
            f"Linear probe (logistic regression on frozen features): {metrics.get('linear_probe_top1', 0):.2f}%. "
            f"Curves: `{args.out}/curves.png`.")


LAYOUT_MODELS = (("airnet", 32, 32, 32), ("resnet18", 16, 32, 128), ("resnet18", 16, 96, 64), ("resnet18", 16, 128, 64))


def layout(args) -> str:
    """Encoder forward + backward + SGD images/s, NCHW (contiguous) vs channels_last, interleaved rounds."""
    lines = []
    for arch, width, size, batch in LAYOUT_MODELS:
        torch.manual_seed(0)
        model = build_encoder(arch, 128, size, width)
        x = torch.randn(batch, 3, size, size)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        best: dict[str, float] = {}
        for _ in range(args.reps):
            for fmt in (torch.contiguous_format, torch.channels_last):
                model = model.to(memory_format=fmt)
                xf = x.contiguous(memory_format=fmt)
                steps = max(4, 512 // batch)
                for i in range(steps + 1):
                    if i == 1:  # the first step warms up
                        t = time.perf_counter()
                    loss = model(xf).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                rate = steps * batch / (time.perf_counter() - t)
                best[str(fmt)] = max(best.get(str(fmt), 0.0), rate)
        nchw, last = best[str(torch.contiguous_format)], best[str(torch.channels_last)]
        lines.append(f"| {arch} w{width} | {size} | {batch} | {nchw:.0f} | {last:.0f} | {last / nchw:.2f}x |")
    return (f"best of {args.reps} interleaved rounds, {torch.get_num_threads()} torch threads\n\n"
            "| encoder | px | batch | NCHW img/s | channels_last img/s | ratio |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["step-cost", "throughput", "cifar-cpu", "layout"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--objective", default="nce")
    p.add_argument("--tau", type=float, default=0.07)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--knn-every", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="train on the first N of the 50,000 (0: all)")
    p.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    p.add_argument("--jpeg", default=str(ROOT / "data/cifar10-jpeg"), help="extracted cifar10_jpeg.tar.gz")
    p.add_argument("--out", default=str(ROOT / "runs/bench-cifar-cpu"))
    args = p.parse_args()
    body = {"step-cost": step_cost, "throughput": throughput, "cifar-cpu": cifar_cpu, "layout": layout}[args.mode](args)
    print(f"### {args.mode}\n\nMachine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`\n\n{body}\n")


if __name__ == "__main__":
    main()
