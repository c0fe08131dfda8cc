"""The NPID training loop: one function, `train(cfg)`, that writes everything into the run folder.

run folder: config.yaml, checkpoint.pt (every epoch), log.jsonl (one row per epoch), curves.png,
neighbours.png, collection_map.png, metrics.json, export/ (what the index consumes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import policy
from .cache import CacheUnavailable, cached_folder
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayImages,
    ImageFolder,
    open_dataset,
)
from .distributed import Dist, all_gather_cat, init_from_env, local_device, mean_over_ranks
from .embed import model_config, write_export
from .evaluate import final_evaluation, knn_monitor
from .feed import DeviceFeed, LoaderFeed, mix_seed
from .model import Encoder, build_encoder
from .objective import NPIDObjective
from .plots import plot_curves
from .preprocess import Preprocess
from .schedule import lr_at

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingCancelled(RuntimeError):
    """`should_stop()` returned True; nothing was exported."""


@dataclass
class Progress:
    """What a caller (CLI, background job) sees while training runs."""

    phase: str  # loading | training | embedding | exporting
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    knn_top1: float | None = None


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
    """This rank's rows of the global batch's noise ids: every rank draws the same B x m ids, then slices."""
    if not objective.needs_noise:
        return None
    device = objective.bank.vectors.device
    g = torch.Generator(device=device).manual_seed(mix_seed(seed, epoch, step, 4))
    b = global_batch // d.world
    return objective.draw_noise(global_batch, g, device)[d.rank * b:(d.rank + 1) * b]  # b x m


def train_step(step_model: nn.Module, objective: NPIDObjective, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None, d: Dist,
               autocast=contextlib.nullcontext) -> torch.Tensor:
    """One SGD step on this rank's slice, then the same bank update on every rank. -> detached loss."""
    with autocast():
        loss, f = step_model(x, idx, noise)  # f: b x D
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    objective.update_bank(all_gather_cat(idx, d), all_gather_cat(f.detach(), d))  # B ids, B x D
    return loss.detach()


# fields that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = {"epochs", "device", "progress", "knn_every", "knn_k", "eval_data", "workers", "compile",
                     "out", "extra"}


def check_same_run(saved: dict, cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume a checkpoint of a different run into this one."""
    now = cfg.to_dict()
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        raise ValueError(f"{ckpt} belongs to a different run ({', '.join(differ)} differ): choose another --out, "
                         "or delete the checkpoint to start over")


def open_training_data(cfg: TrainConfig, device: torch.device,
                       progress: bool) -> tuple[TrainConfig, ImageFolder | ArrayImages, Preprocess]:
    """The collection, cfg with the policy's choices filled in (trainer/policy.py), and the eval transform.

    An image folder is read through the decode-once cache; the PIL loader only when asked for
    (data_path=loader) or when the cache does not fit its disk budget.
    """
    ds = open_dataset(cfg.data, "train", cfg.limit)
    cifar = cfg.data.startswith("cifar10:")
    if isinstance(ds, ArrayImages):
        short = ds.images.shape[1]
    else:
        short = policy.median_short_side([ds.root / p for p in ds.collection.paths], cfg.seed)
    cfg = policy.resolve(cfg, short, device.type == "cuda")
    pre = Preprocess.for_size(cfg.image_size, *((CIFAR10_MEAN, CIFAR10_STD) if cifar
                                                else (IMAGENET_MEAN, IMAGENET_STD)))
    if isinstance(ds, ImageFolder) and cfg.data_path != "loader":
        try:
            ds = cached_folder(ds.root, pre, cfg.cache_dir or None, cfg.limit, torch.get_num_threads(), progress)
        except CacheUnavailable as e:
            if cfg.data_path == "device":
                raise
            log.warning("%s: training with the per-image PIL loader instead (slower)", e)
    if isinstance(ds, ImageFolder):
        skipped = ds.validate(progress)
        if skipped:
            log.warning("skipped %d unreadable file(s) of %d", len(skipped), len(skipped) + len(ds))
        if len(ds) == 0:
            raise ValueError(f"no readable images under {cfg.data}")
    return cfg, ds, pre


def make_feed(cfg: TrainConfig, ds, pre: Preprocess, device: torch.device, d: Dist):
    if isinstance(ds, ArrayImages):  # CIFAR arrays, or an image folder's cached squares
        return DeviceFeed(ds.images, pre, cfg.augmentation, cfg.batch_size, cfg.seed, device, d)
    return LoaderFeed(ds, pre, cfg.augmentation, cfg.batch_size, cfg.seed, device, d, cfg.workers)


def train(cfg: TrainConfig, on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True) -> dict:
    """Train NPID on cfg.data, evaluate, export. Returns the final metrics (also in metrics.json)."""
    device = local_device(cfg.device)
    d = init_from_env(device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    show = cfg.progress and d.main
    report = on_progress if (on_progress and d.main) else (lambda p: None)
    report(Progress("loading", epochs=cfg.epochs))

    cfg, ds, pre = open_training_data(cfg, device, show)
    eval_ds = open_dataset(cfg.eval_data, "test") if cfg.eval_data else None
    feed = make_feed(cfg, ds, pre, device, d)
    n = len(ds)
    if d.main:
        cfg.save(out / "config.yaml")
        log.info("training on %d images (%s path, %s, world %d): %s", n, type(feed).__name__, device, d.world,
                 cfg.data)

    encoder = build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem)
    objective = NPIDObjective(cfg, n, torch.Generator().manual_seed(mix_seed(cfg.seed, 7)))
    objective.reduce_mean = lambda t: mean_over_ranks(t, d)
    learner = Learner(encoder, objective).to(device)
    amp = cfg.amp and device.type == "cuda"
    if amp:
        learner = learner.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(learner.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.decay)
    start_epoch, history = 0, []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        check_same_run(torch.load(ckpt, map_location="cpu", weights_only=False)["config"], cfg, ckpt)
        start_epoch, history, _ = load_checkpoint(ckpt, learner=learner, optimizer=optimizer)
        log.info("resumed from %s at epoch %d", ckpt, start_epoch)
    elif d.main:
        (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
    step_model: nn.Module = learner
    if d.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            learner, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        step_model = torch.compile(step_model)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    if d.main and start_epoch < cfg.epochs:
        tqdm.write(f"{'epoch':>5} {'loss':>9} {'kNN@1':>7} {'lr':>8} {'img/s':>8} {'time':>7}")
    train_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        learner.train()
        steps = feed.steps(epoch)
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   unit="step")
        for step, (x, idx, global_batch) in enumerate(feed.epoch(epoch)):
            if should_stop and should_stop():
                bar.close()
                raise TrainingCancelled(f"cancelled at epoch {epoch + 1} step {step + 1}")
            lr = lr_at(cfg, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            noise = step_noise(objective, cfg.seed, epoch, step, global_batch, d)
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = train_step(step_model, objective, optimizer, x, idx, noise, d, autocast)
            loss_sum += loss
            seen += global_batch
            if step % 10 == 0 or step == steps - 1:
                loss_now = mean_over_ranks(loss.detach(), d).item()
                if not math.isfinite(loss_now):
                    bar.close()
                    raise TrainingDiverged(
                        f"loss became {loss_now} at epoch {epoch + 1} step {step + 1} (lr {lr:.4g}, "
                        f"tau {cfg.temperature}); lower the learning rate or raise the temperature")
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:.0f}")
                done = epoch - start_epoch + (step + 1) / steps
                remaining = (cfg.epochs - start_epoch - done) * (time.perf_counter() - train_start) / done
                report(Progress("training", epoch + 1, cfg.epochs, step + 1, steps, loss_now, rate, remaining))
            bar.update(1)
        bar.close()
        epoch_loss = mean_over_ranks(loss_sum / steps, d).item()
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"epoch {epoch + 1} mean loss is {epoch_loss}; lower the learning rate")
        elapsed = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "images_per_s": seen / elapsed,
               "epoch_s": elapsed, "knn_top1": None}
        last = epoch + 1 == cfg.epochs
        if d.main and cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or last):
            knn = knn_monitor(learner.encoder, objective.bank.vectors, ds, eval_ds, pre, cfg.knn_k,
                              cfg.temperature, device)
            if knn:
                row["knn_top1"] = knn[f"top1@{cfg.knn_k[0]}"]
                row["knn"] = knn
        history.append(row)
        if d.main:
            knn_txt = f"{row['knn_top1']:7.2f}" if row["knn_top1"] is not None else f"{'-':>7}"
            tqdm.write(f"{epoch + 1:5d} {epoch_loss:9.4f} {knn_txt} {lr:8.4g} {row['images_per_s']:8.0f} "
                       f"{elapsed:6.1f}s")
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            save_checkpoint(ckpt, learner=learner, optimizer=optimizer, epoch=epoch + 1,
                            config=cfg.to_dict(), history=history)
            report(Progress("training", epoch + 1, cfg.epochs, steps, steps, epoch_loss,
                            row["images_per_s"], knn_top1=row["knn_top1"]))

    if not d.main:
        return {}
    return finish(cfg, learner.encoder, ds, eval_ds, pre, device, out, history, report, should_stop)


def finish(cfg: TrainConfig, encoder: Encoder, ds, eval_ds, pre: Preprocess, device, out: Path,
           history: list[dict], report: Callable[[Progress], None],
           should_stop: Callable[[], bool] | None) -> dict:
    """Final evaluation, pictures and the export (rank 0 only)."""
    report(Progress("embedding", cfg.epochs, cfg.epochs))
    if history:
        plot_curves(history, out / "curves.png")
    train_f, metrics = final_evaluation(encoder, ds, eval_ds, pre, cfg.knn_k, cfg.temperature, device, out,
                                        cfg.seed, cfg.progress)
    metrics.update({"images": len(ds), "skipped": len(ds.skipped), "epochs": cfg.epochs,
                    "train_seconds": sum(r["epoch_s"] for r in history),
                    "final_loss": history[-1]["loss"] if history else None})
    if should_stop and should_stop():
        raise TrainingCancelled("cancelled before export")
    report(Progress("exporting", cfg.epochs, cfg.epochs))
    mcfg = model_config(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem)
    write_export(out / "export", train_f.cpu().numpy(), ds, encoder, mcfg, pre,
                 {"train_config": cfg.to_dict(), "metrics": metrics})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if "knn" in metrics:
        k = cfg.knn_k[0]
        log.info("kNN (%s): top-1 %.2f%%  top-5 %.2f%%  1-NN %.2f%%  linear probe %s",
                 metrics["knn_protocol"], metrics["knn"][f"top1@{k}"], metrics["knn"][f"top5@{k}"],
                 metrics["knn"]["nn1"], f"{metrics['linear_probe_top1']:.2f}%"
                 if "linear_probe_top1" in metrics else "-")
    log.info("wrote %s", out / "export")
    return metrics
