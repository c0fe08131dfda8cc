"""The CPU recipe: what makes NPID useful on 2 cores in a few minutes. Results go to docs/cpu-recipe.md.

    python bench/cpu_recipe.py rates                 # training images/s of each backbone, side by side
    python bench/cpu_recipe.py sweep --limit 2500    # recipe variants at a fixed compute budget, vs raw pixels
    python bench/cpu_recipe.py check FOLDER          # the job's CPU recipe on a whole folder, vs raw pixels
    python bench/cpu_recipe.py order RUN...          # label-free quality beside kNN for finished runs
    python bench/cpu_recipe.py warm                  # warm start vs scratch on a collection that grew

Budgets are counted in a unit that does not move when other processes share the cores: training images
processed. The reference backbone (the jobs' old default) gets 250 images per budget second (its measured rate),
any other backbone that times its images/s ratio to the reference, measured side by side in one process
(medians of interleaved rounds). `--budget-s` is the training time at those rates; `sweep`
at 1/4 of the collection with 1/4 of the budget gives every variant the epochs it would get at full scale.
Each mode prints the machine, versions and command with its table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trainer_bench import machine  # noqa: E402

from trainer import recipe  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import CIFAR10_MEAN, CIFAR10_STD, open_dataset  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.feed import DeviceFeed  # noqa: E402
from trainer.knn import knn_accuracy  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.objective import NPIDObjective  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402
from trainer.step import Learner, train_step  # noqa: E402
from trainer.train import train  # noqa: E402

REFERENCE = "resnet18-w16"  # the jobs' old CPU default (before trainer/recipe.py:CPU_RECIPE)
REFERENCE_IMAGES_PER_S = 250.0  # its images/s on one worker thread (docs/jobs-benchmark.md)
BACKBONES = {"resnet18-w16": ("resnet18", 16), "resnet18-w8": ("resnet18", 8), "airnet-w32": ("airnet", 32),
             "airnet-w16": ("airnet", 16), "airnet-w64": ("airnet", 64)}


def rates(names: list[str], image_size: int, batch: int, threads: int, rounds: int, steps: int) -> dict[str, float]:
    """Training images/s (augmentation, forward, backward, SGD, bank update) per backbone, interleaved rounds.

    A name "airnet-w32/b32" sets that backbone's batch size (default: `batch`).
    """
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    pre = Preprocess.for_size(image_size, CIFAR10_MEAN, CIFAR10_STD)
    setups = {}
    for name in names:
        backbone, _, b = name.partition("/b")
        arch, width = BACKBONES[backbone]
        batch = int(b) if b else batch
        images = rng.integers(0, 256, (128 * steps, image_size, image_size, 3), dtype=np.uint8)  # same work each
        cfg = TrainConfig(data="bench", arch=arch, width=width, batch_size=batch, objective="softmax",
                          temperature=0.1, image_size=image_size)
        objective = NPIDObjective(cfg, 10_000)
        learner = Learner(build_encoder(arch, cfg.dim, image_size, width), objective)
        opt = torch.optim.SGD(learner.parameters(), lr=0.03, momentum=0.9)
        feed = DeviceFeed(images, pre, cfg.augmentation, batch, 0, torch.device("cpu"), Dist())
        setups[name] = (learner, objective, opt, feed, len(images))
    seen: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name, (learner, objective, opt, feed, n) in setups.items():
            t = time.perf_counter()
            for x, idx, _ in feed.epoch(r):
                train_step(learner, objective, opt, x, idx, None, Dist())
            if r:  # round 0 warms up
                seen[name].append(n / (time.perf_counter() - t))
    return {name: statistics.median(v) for name, v in seen.items()}


def raw_pixels_knn(ds, tau: float) -> dict[str, float]:
    """Leave-one-out weighted kNN on centred, L2-normalised raw pixels: the bar a learned embedding must pass."""
    from trainer.cache import decode_square
    from trainer.data import ArrayImages

    pre = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)  # a folder: each image as the 32-px cache keeps it
    images = ds.images if isinstance(ds, ArrayImages) else np.stack(
        [decode_square(ds.root / path, pre) for path in ds.collection.paths])
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32))  # N x (32*32*3)
    x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    y = torch.from_numpy(ds.collection.labels)
    return knn_accuracy(x, y, x, y, (200,), tau, exclude_self=True)


DEFAULT = {"arch": "airnet", "width": 32, "bank_init": "features", "batch_size": 32}  # the recipe this sweep varied
# (CPU_RECIPE before its "width 16" row won)
# name -> overrides of the job's old CPU default (resnet18 width 16, softmax tau 0.1, cosine lr 0.03, batch 128)
VARIANTS: dict[str, dict] = {
    "old default": {},
    "+ bank from features": {"bank_init": "features"},
    "+ bank, lr 0.06": {"bank_init": "features", "lr": 0.06},
    "+ bank, warm-up 1": {"bank_init": "features", "warmup_epochs": 1},
    "airnet-w32 + bank": {"arch": "airnet", "width": 32, "bank_init": "features"},
    "airnet-w32 + bank, lr 0.06": {"arch": "airnet", "width": 32, "bank_init": "features", "lr": 0.06},
    "airnet-w32 random bank": {"arch": "airnet", "width": 32},
    "airnet-w16 + bank": {"arch": "airnet", "width": 16, "bank_init": "features"},
    "airnet-w16 + bank, lr 0.06": {"arch": "airnet", "width": 16, "bank_init": "features", "lr": 0.06},
    "airnet-w16 + bank, lr 0.12, warm-up 1": {"arch": "airnet", "width": 16, "bank_init": "features", "lr": 0.12,
                                              "warmup_epochs": 1},
    "airnet-w64 + bank": {"arch": "airnet", "width": 64, "bank_init": "features"},
    "airnet-w32 + bank, batch 64": {"arch": "airnet", "width": 32, "bank_init": "features", "batch_size": 64},
    "airnet-w32 + bank, batch 256": {"arch": "airnet", "width": 32, "bank_init": "features", "batch_size": 256},
    "airnet-w32 + bank, batch 32": {"arch": "airnet", "width": 32, "bank_init": "features", "batch_size": 32},
    "airnet-w16 + bank, batch 32": {"arch": "airnet", "width": 16, "bank_init": "features", "batch_size": 32},
    "airnet-w32 + bank, batch 32, tau 0.05": {"arch": "airnet", "width": 32, "bank_init": "features",
                                              "batch_size": 32, "temperature": 0.05},
    "airnet-w32 + bank, tau 0.05": {"arch": "airnet", "width": 32, "bank_init": "features", "temperature": 0.05},
    "airnet-w32 + bank, tau 0.2": {"arch": "airnet", "width": 32, "bank_init": "features", "temperature": 0.2},
    **{f"default, {name}": {**DEFAULT, **change} for name, change in (
        ("lr 0.06", {"lr": 0.06}), ("lr 0.12", {"lr": 0.12}), ("warm-up 1", {"warmup_epochs": 1}),
        ("tau 0.05", {"temperature": 0.05}), ("tau 0.2", {"temperature": 0.2}), ("width 64", {"width": 64}),
        ("width 16", {"width": 16}), ("batch 256", {"batch_size": 256}))},
}
OLD_DEFAULT = {"arch": "resnet18", "width": 16, "objective": "softmax", "temperature": 0.1, "schedule": "cosine",
               "lr": 0.03, "batch_size": 128}


def backbone_of(cfg: dict) -> str:
    """The rates key: backbone, and the batch size when it is not the reference's 128."""
    batch = "" if cfg["batch_size"] == 128 else f"/b{cfg['batch_size']}"
    return f"{cfg['arch']}-w{cfg['width']}{batch}"


def run_variant(data: str, limit: int, overrides: dict, epochs: int, out: Path) -> dict:
    cfg = TrainConfig(**{**OLD_DEFAULT, **overrides}, data=data, limit=limit, epochs=epochs, out=str(out),
                      knn_every=0, progress=False, seed=0)
    t = time.perf_counter()
    metrics = train(cfg, resume=False)
    return {"top1": metrics["knn"]["top1@200"], "nn1": metrics["knn"]["nn1"], "wall_s": time.perf_counter() - t}


def sweep(args) -> str:
    names = args.only or list(VARIANTS)
    backbones = sorted({backbone_of({**OLD_DEFAULT, **VARIANTS[v]}) for v in names} | {REFERENCE})
    r = rates(backbones, 32, 128, args.threads, args.rounds, 4)
    ds = open_dataset(args.data, "train", args.limit)
    n = len(ds)
    pixels = raw_pixels_knn(ds, 0.1)
    lines = [f"| raw pixels | - | - | - | {pixels['top1@200']:.2f} | {pixels['nn1']:.2f} |"]
    for name in names:
        cfg = {**OLD_DEFAULT, **VARIANTS[name]}
        ratio = r[backbone_of(cfg)] / r[REFERENCE]  # side by side: holds while others share the cores
        rate = REFERENCE_IMAGES_PER_S * ratio
        epochs = max(1, round(args.budget_s * rate / n))
        res = run_variant(args.data, args.limit, VARIANTS[name], epochs, Path(args.out) / name.replace(" ", "_"))
        lines.append(f"| {name} | {backbone_of(cfg)} | {rate:.0f} | {epochs} | {res['top1']:.2f} | {res['nn1']:.2f} |")
        print(lines[-1], flush=True)
    rate_txt = ", ".join(f"{k} {v:.0f}" for k, v in r.items())
    return (f"{n} images of `{args.data}`; budget {args.budget_s:.0f} s of training at {REFERENCE_IMAGES_PER_S:.0f} "
            f"images/s for {REFERENCE} (the jobs' reference rate), other backbones at their measured ratio to it "
            f"(side by side, {args.threads} thread(s): {rate_txt}); leave-one-out weighted kNN (k=200, tau 0.1)\n\n"
            "| variant | backbone | images/s | epochs | kNN top-1 | 1-NN |\n| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(lines))


def untrained_knn(cfg: TrainConfig, ds, pre: Preprocess) -> dict[str, float]:
    """Leave-one-out kNN of cfg's network at its random init (eval mode): what the architecture alone gives."""
    from trainer.embed import embed_dataset

    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem)
    with torch.no_grad():
        feats = embed_dataset(encoder, ds, pre, torch.device("cpu"), progress=False)
    y = torch.from_numpy(ds.collection.labels)
    return knn_accuracy(feats, y, feats, y, (200,), cfg.tau, exclude_self=True)


def check(args) -> str:
    """The machine recipe on a CPU (trainer/recipe.py, as `npid train` and a job decide it) on a whole folder, vs
    raw pixels."""
    ds = open_dataset(args.data, "train")
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cfg = recipe.decide(overrides, recipe.collection_of(args.data), cuda=False)
    cfg = cfg.replace(data=args.data, out=args.out, progress=False, knn_every=0)
    pixels = raw_pixels_knn(ds, cfg.tau)
    t = time.perf_counter()
    metrics = train(cfg, resume=False)
    wall = time.perf_counter() - t
    untrained = untrained_knn(cfg, ds, Preprocess.load(Path(args.out) / "export" / "preprocess.json"))
    return (f"`{args.data}`, {len(ds)} images; CPU default{' with ' + ' '.join(args.set) if args.set else ''}: "
            f"{cfg.arch} width {cfg.width}, {cfg.minutes:g} min budget, {metrics['epochs']:g} epochs done, "
            f"batch {cfg.batch_size}, bank_init {cfg.bank_init}, lr {cfg.lr}, warm-up {cfg.warmup_epochs}; "
            f"training {metrics['train_seconds']:.0f} s, whole run {wall:.0f} s\n\n"
            "| features | kNN top-1 | 1-NN |\n| --- | --- | --- |\n"
            f"| raw pixels | {pixels['top1@200']:.2f} | {pixels['nn1']:.2f} |\n"
            f"| the same network untrained (seed {cfg.seed}) | {untrained['top1@200']:.2f} | {untrained['nn1']:.2f} |\n"
            f"| NPID, CPU default | {metrics['knn']['top1@200']:.2f} | {metrics['knn']['nn1']:.2f} |\n\n"
            + json.dumps({k: v for k, v in metrics.items() if k != "knn"}, default=str))


def order(args) -> str:
    """Label-free quality beside leave-one-out kNN for finished runs (their exports): do they rank alike?"""
    from scipy.stats import kendalltau, spearmanr

    from service.jobs.promotion import export_quality

    rows = []
    for run in map(Path, args.runs):
        export = run / "export"
        meta = json.loads((export / "export.json").read_text())
        ds = open_dataset(meta["train_config"]["data"], "train", meta["train_config"]["limit"])
        flip = TrainConfig.from_dict(meta["train_config"]).flip
        q = export_quality(export, ds, torch.device("cpu"), flip)
        knn = meta["metrics"]["knn"]
        rows.append((run.name, meta["train_config"]["epochs"], knn["top1@200"], q))
    rows.sort(key=lambda r: r[2])
    knn_v = [r[2] for r in rows]
    lines = [f"| {name} | {ep} | {k:.2f} | {q['self_top1']:.1f} | {q['self_top10']:.1f} | {q['alignment']:.3f} | "
             f"{q['uniformity']:.3f} |" for name, ep, k, q in rows]
    rho = spearmanr(knn_v, [r[3]["self_top1"] for r in rows]).statistic
    tau = kendalltau(knn_v, [r[3]["self_top1"] for r in rows]).statistic
    return ("| version (run) | epochs | kNN top-1 (labels) | self top-1 | self top-10 | alignment | uniformity |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines) +
            f"\n\nRank agreement of self top-1 with kNN top-1 over {len(rows)} versions: Spearman {rho:.2f}, "
            f"Kendall {tau:.2f}")


def warm(args) -> str:
    """Warm start vs from scratch at the same budget, on a collection that grew from --before to --after images."""
    from service.jobs.promotion import export_quality
    from trainer.speed import training_rate

    fields = {**OLD_DEFAULT, **recipe.CPU_RECIPE}
    out = Path(args.out)
    rate = args.images_per_s or training_rate(TrainConfig(**fields), args.after,
                                              torch.device("cpu"))

    def run(name: str, limit: int, **extra) -> dict:
        epochs = max(1, round(args.budget_s * rate / limit))
        cfg = TrainConfig(**{**fields, **extra}, data=args.data, limit=limit, epochs=epochs, out=str(out / name),
                          knn_every=0, progress=False)
        metrics = train(cfg, resume=False)
        q = export_quality(out / name / "export", open_dataset(args.data, "train", limit), torch.device("cpu"),
                           cfg.flip)
        return {"name": name, "n": limit, "epochs": epochs, "top1": metrics["knn"]["top1@200"], "q": q}

    rows = [run("before", args.before)]
    start = str(out / "before" / "export" / "model.pt")
    rows.append(run("grown, from scratch", args.after))
    rows.append(run("grown, warm start (init: live)", args.after, init_model=start, bank_init="features"))
    lines = [f"| {r['name']} | {r['n']} | {r['epochs']} | {r['top1']:.2f} | {r['q']['self_top1']:.1f} | "
             f"{r['q']['self_top10']:.1f} |" for r in rows]
    return (f"`{args.data}`: the first {args.before} images, then the first {args.after}; each run trains the CPU "
            f"recipe for the epochs {args.budget_s:.0f} s buy at {rate:.0f} images/s\n\n"
            "| version | images | epochs | kNN top-1 | self top-1 | self top-10 |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    pr = sub.add_parser("rates")
    pr.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    pr.add_argument("--image-size", type=int, default=32)
    pr.add_argument("--batch", type=int, default=128)
    pr.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    pr.add_argument("--rounds", type=int, default=3)
    ps = sub.add_parser("sweep")
    ps.add_argument("--data", default="cifar10:/work/shared/data/cifar10")
    ps.add_argument("--limit", type=int, default=2500)
    ps.add_argument("--budget-s", type=float, default=60.0)
    ps.add_argument("--threads", type=int, default=1)
    ps.add_argument("--rounds", type=int, default=3)
    ps.add_argument("--only", nargs="*")
    ps.add_argument("--out", default="runs/cpu-recipe")
    po = sub.add_parser("order")
    po.add_argument("runs", nargs="+", help="run folders with an export/ (e.g. runs/cpu-recipe/*)")
    pw = sub.add_parser("warm")
    pw.add_argument("--data", default="cifar10:/work/shared/data/cifar10")
    pw.add_argument("--before", type=int, default=2000)
    pw.add_argument("--after", type=int, default=2500)
    pw.add_argument("--budget-s", type=float, default=60.0)
    pw.add_argument("--out", default="runs/cpu-warm")
    pw.add_argument("--images-per-s", type=float, default=0.0, help="the budget's rate (0: time the recipe here)")
    pc = sub.add_parser("check")
    pc.add_argument("data")
    pc.add_argument("--out", default="runs/cpu-check")
    pc.add_argument("--set", nargs="*", default=[], help="overrides of the job's config, key=value (YAML values)")
    pc.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (default: all cores, as the job of a first version)")
    args = p.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1) if isinstance(getattr(args, "threads", 1), int) else 1)
    print(f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
          f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if args.mode == "rates":
        for t in args.threads:
            r = rates(args.backbones, args.image_size, args.batch, t, args.rounds, 4)
            base = r.get("resnet18-w16")
            print(f"\n{t} thread(s), {args.image_size} px, batch {args.batch}\n\n"
                  "| backbone | images/s | vs resnet18-w16 |\n| --- | --- | --- |")
            for name, v in r.items():
                print(f"| {name} | {v:.0f} | {v / base:.2f}x |" if base else f"| {name} | {v:.0f} | - |")
    elif args.mode == "sweep":
        torch.set_num_threads(args.threads)
        print(sweep(args))
    elif args.mode == "warm":
        torch.set_num_threads(1)
        print(warm(args))
    elif args.mode == "order":
        torch.set_num_threads(1)
        print(order(args))
    else:
        print(check(args))


if __name__ == "__main__":
    main()
