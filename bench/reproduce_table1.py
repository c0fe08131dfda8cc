"""Reproduce the paper's CIFAR-10 Table 1 (ResNet-18, 128-d, weighted kNN k=200) within one device lease.

    python3 bench/reproduce_table1.py --out $OUT --budget-s 540 [--data DIR] [--plan smoke,softmax,nce]

Data: DIR holds `cifar10_jpeg.tar.gz` (the JPEG tree, 19 MB) and `test_batch_first1000.npz` (lossless,
2.8 MB), by default ../shared/data/cifar10 (carry them as data/cifar10 to a device machine). The 50,000
training JPEGs are decoded once, in parallel, into arrays: the training set is `train-50k-jpeg`. kNN is
reported on `test-1k-lossless` (the per-epoch monitor too) and on `test-10k-jpeg` (the JPEG test tree).

Phases, each under the script's own deadline (start + --budget-s; a phase is stopped in time to evaluate):
  smoke    2 epochs of the exact softmax on 5,000 images: the whole path, about a minute with start-up
  softmax  Table 1's exact-softmax row, 200 epochs (--softmax-epochs), tau 0.1
  nce      NCE m=4096 rows, tau 0.1 (the reference's CIFAR setting), for as many epochs as the time left
           allows at the softmax run's measured pace (at most --nce-epochs, lr x0.1 at 60% and 80%)
  nce-shared  the same with one set of noise ids per batch (docs/nce-shared-negatives.md); not in the
           default plan

Everything lands in --out as it happens, at most 6 small files and no checkpoints: results.json
(rewritten after every epoch: configs, per-row results, status, device, versions, command), log.jsonl
(one row per epoch of every phase), run.log (this script's log), curves-<phase>.png. Training images/s
are reported beside the plain forward+backward+SGD images/s of the same model and batch (NPID overhead).
Runs on the CPU too, for testing at reduced scale (--device cpu --width 8 --limit 1000 ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import TrainConfig  # noqa: E402
from trainer.data import ImageFolder, load_cifar10, load_rgb  # noqa: E402
from trainer.distributed import local_device  # noqa: E402
from trainer.embed import embed_dataset, load_model  # noqa: E402
from trainer.evaluate import labels_of  # noqa: E402
from trainer.knn import knn_accuracy  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.plots import plot_curves  # noqa: E402
from trainer.progress import Progress, TrainingCancelled  # noqa: E402
from trainer.train import train  # noqa: E402

log = logging.getLogger("reproduce_table1")
PAPER = {"softmax": {"knn_top1": 80.8, "linear": 75.4}, "nce4096": {"knn_top1": 80.4, "linear": 70.2}}
EVAL_RESERVE_S = 75.0  # final embedding, kNN, linear probe and the JPEG test split after a phase's training


class Report:
    """results.json and log.jsonl in --out, rewritten / appended as the run goes."""

    def __init__(self, out: Path, header: dict):
        self.out = out
        self.results = {**header, "status": "running", "rows": {}}
        self.save()

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out / "results.json")

    def row(self, phase: str) -> dict:
        return self.results["rows"].setdefault(phase, {})

    def epoch(self, phase: str, p: Progress, history: list[dict]) -> None:
        entry = {"phase": phase, "epoch": p.epoch, "epochs": p.epochs, "loss": p.loss,
                 "images_per_s": p.images_per_s, "knn_top1_test1k": p.knn_top1, "time": time.time()}
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        history.append({"epoch": p.epoch, "loss": p.loss, "knn_top1": p.knn_top1})
        self.row(phase).update(epochs_done=p.epoch, last_loss=p.loss, last_knn_top1_test1k=p.knn_top1)
        self.save()
        if p.knn_top1 is not None or p.epoch == p.epochs:
            plot_curves(history, self.out / f"curves-{phase}.png")


def stage_data(data: Path, work: Path, workers: int = 16) -> tuple[Path, Path]:
    """Decode the JPEG training tree once into data_batch_{1..5}.npz beside the lossless test file.

    -> (the arrays' directory, for cifar10:<dir>; the JPEG test tree, test-10k-jpeg).
    """
    with tarfile.open(data / "cifar10_jpeg.tar.gz") as tf:
        tf.extractall(work / "jpeg", filter="data")
    folder = ImageFolder(work / "jpeg" / "train")
    paths = [folder.root / p for p in folder.collection.paths]
    with ThreadPoolExecutor(workers) as pool:
        images = np.stack(list(pool.map(lambda p: np.asarray(load_rgb(p)), paths, chunksize=512)))  # N x 32 x 32 x 3
    labels = folder.collection.labels  # class ids by sorted name: the CIFAR-10 order
    order = np.random.default_rng(0).permutation(len(images))  # classes mixed, so any first N is a fair subset
    images, labels = images[order], labels[order]
    arrays = work / "train-50k-jpeg"
    arrays.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        np.savez(arrays / f"data_batch_{i + 1}.npz", images=images[part], labels=labels[part])
    (arrays / "test_batch_first1000.npz").write_bytes((data / "test_batch_first1000.npz").read_bytes())
    log.info("staged %d training images (train-50k-jpeg) in %s", len(images), arrays)
    return arrays, work / "jpeg" / "test"


def plain_throughput(width: int, batch: int, device: torch.device, amp: bool, deadline: float,
                     steps: int = 30) -> float:
    """Images/s of forward+backward+SGD of the same encoder on random input: the floor NPID adds to.

    Up to `steps` timed steps after 3 warm-up steps, fewer when the deadline comes first.
    """
    torch.manual_seed(0)
    model = build_encoder("resnet18", 128, 32, width).to(device, memory_format=torch.channels_last)  # as train.py
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    t, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.time() < deadline):
        step()
        done += 1
    sync()
    return done * batch / (time.perf_counter() - t)


def evaluate_jpeg_test(run: Path, jpeg_test: Path, device, tau: float) -> dict:
    """kNN on test-10k-jpeg against the exported (eval-transform) features of the training set."""
    from trainer.augment import Preprocess

    encoder = load_model(run / "export" / "model.pt", device)
    pre = Preprocess.load(run / "export" / "preprocess.json")
    train_f = torch.from_numpy(np.load(run / "export" / "embeddings.npy")).to(device)
    train_ds = load_cifar10(json.loads((run / "export" / "export.json").read_text())["train_config"]["data"]
                            .split(":", 1)[1], "train")
    train_y = labels_of(train_ds)[: len(train_f)]
    test = ImageFolder(jpeg_test)
    f = embed_dataset(encoder, test, pre, device, batch_size=1000, workers=min(8, os.cpu_count() or 1),
                      progress=False)
    return knn_accuracy(f, labels_of(test, train_ds), train_f, train_y, (200,), tau)


def run_phase(name: str, cfg: TrainConfig, report: Report, deadline: float, jpeg_test: Path | None,
              args) -> dict:
    """Train one row under the deadline, evaluate it, record everything in the report."""
    row = report.row(name)
    row.update(objective=cfg.objective, tau=cfg.tau, negatives=cfg.negatives if cfg.objective == "nce" else None,
               epochs_planned=cfg.epochs, milestones=list(cfg.milestones), images=cfg.limit or 50_000,
               status="training", config=cfg.to_dict())
    report.save()
    history: list[dict] = []
    stop_at = deadline - EVAL_RESERVE_S
    t0 = time.perf_counter()
    try:
        metrics = train(cfg, on_progress=lambda p: p.epoch_done and report.epoch(name, p, history),
                        should_stop=lambda: time.time() > stop_at, resume=False)
    except TrainingCancelled as e:
        row.update(status=f"stopped by the deadline: {e}", train_wall_s=time.perf_counter() - t0)
        report.save()
        log.warning("%s: %s", name, e)
        return row
    rows = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    epoch_s = [r["epoch_s"] for r in rows]
    row.update(status="trained", train_s=sum(epoch_s), s_per_epoch_median=float(np.median(epoch_s)),
               train_images_per_s=float(np.median([r["images_per_s"] for r in rows])),
               knn_test1k=metrics.get("knn"), linear_probe_test1k=metrics.get("linear_probe_top1"),
               wall_s=time.perf_counter() - t0)
    report.save()
    if jpeg_test is not None and time.time() < deadline - 20:
        row["knn_test10k_jpeg"] = evaluate_jpeg_test(Path(cfg.out), jpeg_test, cfg.device, cfg.tau)
    row["status"] = "done"
    report.save()
    log.info("%s: %s", name, json.dumps({k: row.get(k) for k in ("knn_test1k", "knn_test10k_jpeg", "train_s")}))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results folder ($OUT on a device machine)")
    p.add_argument("--budget-s", type=float, default=540.0, help="the script's own deadline, from its start")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10")
    p.add_argument("--plan", default="smoke,softmax,nce")
    p.add_argument("--softmax-epochs", type=int, default=200)
    p.add_argument("--nce-epochs", type=int, default=200, help="at most; fewer when time is short")
    p.add_argument("--smoke-images", type=int, default=5000)
    p.add_argument("--limit", type=int, default=0, help="train rows on the first N images (testing)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    start = time.time()
    deadline = start + args.budget_s
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("terminated (SIGTERM)"))  # record it, below
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "run.log")])
    device = local_device(args.device)
    amp = device.type == "cuda"
    if amp:
        torch.backends.cudnn.benchmark = True
    report = Report(args.out, {
        "train_set": "train-50k-jpeg", "eval_sets": ["test-1k-lossless", "test-10k-jpeg"], "paper": PAPER,
        "device": torch.cuda.get_device_name(device) if amp else (platform.processor() or "cpu"),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "command": "python3 " + " ".join(sys.argv), "budget_s": args.budget_s, "started": start})
    work = Path(tempfile.mkdtemp(prefix="table1-"))  # run folders and checkpoints stay out of --out
    try:
        arrays, jpeg_test = stage_data(args.data, work)
        report.results["staging_s"] = time.time() - start
        spec = f"cifar10:{arrays}"
        common = dict(data=spec, eval_data=spec, width=args.width, batch_size=args.batch, device=str(device),
                      compile=args.compile, progress=False, data_path="device", checkpoint_every=0, log_every=100)
        pace = None  # seconds per 50,000-image epoch, from the softmax row
        for phase in args.plan.split(","):
            left = deadline - time.time() - EVAL_RESERVE_S
            if phase == "smoke":
                cfg = TrainConfig(**common, objective="softmax", epochs=2, limit=args.smoke_images, milestones=(),
                                  knn_every=1, out=str(work / "smoke"))
            elif phase == "softmax":
                cfg = TrainConfig(**common, objective="softmax", epochs=args.softmax_epochs, limit=args.limit,
                                  knn_every=10, out=str(work / "softmax"))
            elif phase in ("nce", "nce-shared"):
                epochs = args.nce_epochs if pace is None else min(args.nce_epochs, int(left / (pace * 1.1)))
                if epochs < min(5, args.nce_epochs):
                    report.row(phase).update(status=f"skipped: {left:.0f} s left, {pace} s per epoch")
                    report.save()
                    continue
                cfg = TrainConfig(**common, objective="nce", negatives=4096, shared_negatives=phase == "nce-shared",
                                  epochs=epochs, limit=args.limit, milestones=(int(epochs * 0.6), int(epochs * 0.8)),
                                  knn_every=max(1, epochs // 20), out=str(work / phase))
            else:
                raise SystemExit(f"unknown phase {phase!r}: smoke | softmax | nce | nce-shared")
            if left < 30:
                report.row(phase).update(status=f"skipped: {left:.0f} s left before the evaluation reserve")
                report.save()
                continue
            row = run_phase(phase, cfg, report, deadline, jpeg_test if phase != "smoke" else None, args)
            if phase == "softmax" and row.get("s_per_epoch_median"):
                pace = row["s_per_epoch_median"]
        if time.time() < deadline - 15:
            plain = plain_throughput(args.width, args.batch, device, amp, deadline)
            report.results["plain_fwd_bwd_images_per_s"] = plain
            for row in report.results["rows"].values():
                if row.get("train_images_per_s"):
                    row["npid_overhead"] = plain / row["train_images_per_s"] - 1
        report.results["status"] = "done"
    except BaseException as e:  # recorded in results.json, then raised again
        report.results["status"] = f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        report.results["wall_s"] = time.time() - start
        if amp:
            report.results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report.save()


if __name__ == "__main__":
    main()
