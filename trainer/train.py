"""The NPID training loop: `train(cfg)` writes everything into the run folder.

run folder: config.yaml, checkpoint.pt (every cfg.checkpoint_every epochs, at the end, and when cancelled
or interrupted), log.jsonl (one row per epoch), curves.png, neighbours.png, collection_map.png,
metrics.json, export/ (what the index consumes).

The phases, in order: `prepare` (device, data, model, optimiser, resume), then per epoch `train_epoch`
(its steps: `run_step`) and `end_epoch` (kNN monitor, log row, checkpoint), then `finish` (final
evaluation, pictures, export). A step never waits for the device: the loss is read every cfg.log_every
steps, the checkpoint is written by a background thread, and nothing else reads a device value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import recipe
from .budget import Budget
from .cache import CacheUnavailable, cached_folder
from .checkpoint import CheckpointWriter, checkpoint_state, code_version, read_checkpoint, restore
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
from .distributed import Dist, init_from_env, local_device, mean_over_ranks
from .embed import model_config, write_export
from .evaluate import final_evaluation, knn_monitor
from .feed import DeviceFeed, LoaderFeed, mix_seed
from .model import Encoder, build_encoder
from .objective import NPIDObjective
from .plots import plot_curves
from .preprocess import Preprocess
from .progress import Progress, Tick, TrainingCancelled, ticker
from .schedule import lr_at, lr_at_fraction
from .start import features_of_collection, load_initial_weights
from .step import Learner, step_noise, train_step
from .threads import ThreadTuner

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# fields that may change between an interrupted run and its resumption (or its extension to a longer budget)
RESUMABLE_CHANGES = {"epochs", "minutes", "adapt_threads", "device", "progress", "knn_every", "knn_k", "eval_data",
                     "workers", "compile", "out", "extra", "checkpoint_every", "log_every"}


def check_same_run(saved: dict, cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume a checkpoint of a different run into this one."""
    now = cfg.to_dict()
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        raise ValueError(f"{ckpt} belongs to a different run ({', '.join(differ)} differ): choose another --out, "
                         "or delete the checkpoint to start over")


def open_training_data(cfg: TrainConfig, device: torch.device, progress: bool,
                       tick: Tick | None = None) -> tuple[TrainConfig, ImageFolder | ArrayImages, Preprocess]:
    """The collection, cfg with its "auto" fields decided (trainer/recipe.py), and the eval transform.

    An image folder is read through the decode-once cache; the PIL loader only when asked for
    (data_path=loader) or when the cache does not fit its disk budget.
    """
    ds = open_dataset(cfg.data, "train", cfg.limit)
    cifar = cfg.data.startswith("cifar10:")
    if isinstance(ds, ArrayImages):
        short = ds.images.shape[1]
    else:
        short = recipe.median_short_side([ds.root / p for p in ds.collection.paths], cfg.seed)
    cfg = recipe.resolve(cfg, short, device.type == "cuda")
    pre = Preprocess.for_size(cfg.image_size, *((CIFAR10_MEAN, CIFAR10_STD) if cifar
                                                else (IMAGENET_MEAN, IMAGENET_STD)))
    if isinstance(ds, ImageFolder) and cfg.data_path != "loader":
        try:
            ds = cached_folder(ds.root, pre, cfg.cache_dir or None, cfg.limit, torch.get_num_threads(), progress,
                               tick)
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


def start_state(cfg: TrainConfig, encoder: Encoder, objective: NPIDObjective, feed, pre: Preprocess,
                device, tick: Tick | None = None) -> None:
    """A fresh run's starting point: optional published weights, optional bank of the network's features."""
    if cfg.init_model:
        load_initial_weights(encoder, cfg.init_model, cfg.arch, cfg.dim, cfg.width)
    if cfg.bank_init == "features":
        objective.bank.vectors.copy_(features_of_collection(encoder, feed, pre, device, tick=tick))  # N x D (all)


@dataclass
class EpochProgress:
    """Where the epoch in progress stands; checkpointed with a cut inside an epoch to finish it exactly."""

    step: int = 0  # steps done
    loss_sum: torch.Tensor | None = None  # sum of the step losses (on the device, never read per step)
    seen: int = 0  # images
    seconds: float = 0.0  # time spent in it before a resume

    def to_dict(self) -> dict:
        return {"step": self.step, "loss_sum": self.loss_sum, "seen": self.seen, "seconds": self.seconds}


@dataclass
class Run:
    """Everything one training run holds, built by `prepare` and used by the phases below."""

    cfg: TrainConfig
    device: torch.device
    d: Dist
    out: Path
    ds: ImageFolder | ArrayImages
    eval_ds: ImageFolder | ArrayImages | None
    pre: Preprocess
    feed: DeviceFeed | LoaderFeed
    learner: Learner
    optimizer: torch.optim.Optimizer
    step_model: nn.Module
    amp: bool
    checkpoints: CheckpointWriter
    version: str  # the code's git commit, read once
    history: list[dict]
    start_epoch: int = 0
    resumed: EpochProgress | None = None  # the partial epoch a checkpoint cut, if any
    spent_s: float = 0.0  # wall-clock time of the training phase before this process (a resumed run)
    budget: Budget | None = None  # set when the training phase starts
    tuner: ThreadTuner | None = None  # CPU runs with adapt_threads
    planned_epochs: float | None = None  # the first estimate of where a time budget ends (recorded beside the done)

    @property
    def objective(self) -> NPIDObjective:
        return self.learner.objective

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def save_checkpoint(self, epoch: int, progress: EpochProgress | None = None) -> None:
        """Queue a checkpoint (rank 0): `epoch` completed epochs plus `progress` into the next one."""
        if not self.d.main:
            return
        self.checkpoints.save(checkpoint_state(
            learner=self.learner, optimizer=self.optimizer, epoch=epoch, step=progress.step if progress else 0,
            epoch_progress=progress.to_dict() if progress else {}, config=self.cfg.to_dict(), history=self.history,
            version=self.version, train_seconds=self.budget.elapsed() if self.budget else self.spent_s))


def native_bf16_cpu() -> bool:
    """A CPU with bf16 arithmetic (AVX512-BF16 or AMX): autocast then pays (docs/cpu-recipe.md); elsewhere bf16 is
    emulated and slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def prepare(cfg: TrainConfig, device: torch.device, d: Dist, resume: bool, show: bool,
            tick: Tick | None = None) -> Run:
    """Data, model, optimiser, and the state of an interrupted run when there is one. `tick` follows (and may
    cancel) the long parts: decoding the collection into the cache, filling the bank."""
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, ds, pre = open_training_data(cfg, device, show, tick)
    eval_ds = open_dataset(cfg.eval_data, "test") if cfg.eval_data else None
    feed = make_feed(cfg, ds, pre, device, d)
    if d.main:
        cfg.save(out / "config.yaml")
        log.info("training on %d images (%s path, %s, world %d): %s", len(ds), type(feed).__name__, device,
                 d.world, cfg.data)

    encoder = build_encoder(cfg.arch, cfg.dim, cfg.image_size, cfg.width, cfg.stem)
    objective = NPIDObjective(cfg, len(ds), torch.Generator().manual_seed(mix_seed(cfg.seed, 7)))
    objective.reduce_mean = lambda t: mean_over_ranks(t, d)
    learner = Learner(encoder, objective).to(device)
    amp = cfg.amp and (device.type == "cuda" or native_bf16_cpu())
    if device.type == "cuda":  # cuDNN's fastest conv layout. Not on the CPU: there, oneDNN's channels_last convs
        # hang once torch's thread count changes in the process (tests/trainer/test_threads.py), as a job worker's does
        learner = learner.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(learner.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.decay)
    step_model: nn.Module = learner
    if d.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            learner, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        step_model = torch.compile(step_model)
    run = Run(cfg, device, d, out, ds, eval_ds, pre, feed, learner, optimizer, step_model, amp,
              CheckpointWriter(out / "checkpoint.pt"), code_version() if d.main else "", [])
    if resume and run.checkpoints.path.exists():
        resume_from_checkpoint(run)
    else:
        start_state(cfg, learner.encoder, objective, feed, pre, device, tick)
        if d.main:
            (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
    return run


def resume_from_checkpoint(run: Run) -> None:
    path = run.checkpoints.path
    blob = read_checkpoint(path)
    check_same_run(blob["config"], run.cfg, path)
    restore(blob, learner=run.learner, optimizer=run.optimizer)
    run.start_epoch, run.history = blob["epoch"], blob["history"]
    run.spent_s = blob.get("train_seconds", sum(r["epoch_s"] for r in run.history))
    cut = blob.get("epoch_progress") or {}
    if blob.get("step", 0) > 0:
        run.resumed = EpochProgress(blob["step"], cut["loss_sum"].to(run.device), cut["seen"], cut["seconds"])
    log.info("resumed from %s at epoch %d step %d", path, run.start_epoch, blob.get("step", 0))


def run_step(run: Run, x: torch.Tensor, idx: torch.Tensor, global_batch: int, epoch: int, step: int,
             steps: int, fraction: float | None = None) -> torch.Tensor:
    """Learning rate, noise ids, one SGD step and bank update. -> the detached loss, still on the device.
    fraction: the share of a time-budgeted run done, which its schedule follows (else the schedule follows
    the epoch)."""
    cfg = run.cfg
    lr = lr_at_fraction(cfg, fraction) if cfg.budget_s and fraction is not None else lr_at(cfg, epoch + step / steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    noise = step_noise(run.objective, cfg.seed, epoch, step, global_batch, run.d)
    return train_step(run.step_model, run.objective, run.optimizer, x, idx, noise, run.d, run.autocast)


def train_epoch(run: Run, epoch: int, progress: EpochProgress, report: Callable[[Progress], None],
                should_stop: Callable[[], bool], show: bool) -> dict | None:
    """The steps of one epoch (from progress.step on), up to the step where the run's budget is spent; updates
    `progress` after each. -> its log row ("partial": the budget ran out inside it), None when the budget ran out
    before its first step."""
    cfg, d, budget = run.cfg, run.d, run.budget
    run.learner.train()
    steps = run.feed.steps(epoch)
    images = len(run.ds)
    t0 = time.perf_counter() - progress.seconds
    if progress.loss_sum is None:
        progress.loss_sum = torch.zeros((), device=run.device)
    lr = 0.0
    bar = tqdm(total=steps, initial=progress.step, desc=f"epoch {epoch + 1}", disable=not show, leave=False,
               unit="step")
    with contextlib.closing(bar):
        for step, (x, idx, global_batch) in enumerate(run.feed.epoch(epoch, progress.step), progress.step):
            if should_stop():
                progress.seconds = time.perf_counter() - t0
                raise TrainingCancelled(f"cancelled at epoch {epoch + 1} step {step + 1}")
            fraction = budget.fraction(epoch + step / steps, d)
            if fraction >= 1.0:  # the budget is spent: stop at this step boundary
                break
            loss = run_step(run, x, idx, global_batch, epoch, step, steps, fraction)
            if run.tuner is not None:
                run.tuner.step_done(x.shape[0])
            lr = run.optimizer.param_groups[0]["lr"]
            progress.loss_sum += loss
            progress.seen += global_batch
            progress.step = step + 1
            if step % cfg.log_every == 0 or step == steps - 1:  # the only read of a device value in the loop
                loss_now = check_finite(mean_over_ranks(loss, d).item(), epoch, step, cfg)
                rate = progress.seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:.0f}")
                at = epoch + (step + 1) / steps
                planned = budget.planned_epochs(at, rate, images)
                if run.planned_epochs is None and at - run.start_epoch >= 0.5:  # past the first steps' warm-up
                    run.planned_epochs = round(planned, 1)
                report(Progress("training", epoch + 1, round(planned), step + 1, steps, loss_now, rate,
                                budget.eta_s(at, rate, images)))
            bar.update(1)
    if progress.seen == 0:
        return None
    done = max(progress.step, 1)
    epoch_loss = mean_over_ranks(progress.loss_sum / done, d).item()
    if not math.isfinite(epoch_loss):
        raise TrainingDiverged(f"epoch {epoch + 1} mean loss is {epoch_loss}; lower the learning rate")
    elapsed = time.perf_counter() - t0
    return {"epoch": epoch + 1, "steps": progress.step, "epoch_steps": steps, "partial": progress.step < steps,
            "loss": epoch_loss,
            "lr": lr, "images_per_s": progress.seen / max(elapsed, 1e-9), "epoch_s": elapsed, "knn_top1": None}


def check_finite(loss: float, epoch: int, step: int, cfg: TrainConfig) -> float:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss became {loss} at epoch {epoch + 1} step {step + 1} (lr "
                               f"{lr_at(cfg, epoch):.4g}, tau {cfg.tau}); lower the learning rate or raise the "
                               "temperature")
    return loss


def end_epoch(run: Run, row: dict, last: bool, progress: EpochProgress, report: Callable[[Progress], None]) -> None:
    """kNN monitor, table row, log.jsonl, checkpoint when due (rank 0). last: the run ends with this row."""
    cfg, epoch = run.cfg, row["epoch"]
    if run.d.main and cfg.knn_every and (epoch % cfg.knn_every == 0 or last):
        knn = knn_monitor(run.learner.encoder, run.objective.bank.vectors, run.ds, run.eval_ds, run.pre, cfg.knn_k,
                          cfg.tau, run.device)
        if knn:
            row["knn_top1"] = knn[f"top1@{cfg.knn_k[0]}"]
            row["knn"] = knn
    run.history.append(row)
    if not run.d.main:
        return
    knn_txt = f"{row['knn_top1']:7.2f}" if row["knn_top1"] is not None else f"{'-':>7}"
    tqdm.write(f"{epoch:5d} {row['loss']:9.4f} {knn_txt} {row['lr']:8.4g} {row['images_per_s']:8.0f} "
               f"{row['epoch_s']:6.1f}s")
    with open(run.out / "log.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    if row["partial"]:  # the budget ran out inside the epoch: an extension finishes it from this step
        run.save_checkpoint(epoch - 1, progress)
    elif last or (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0):
        run.save_checkpoint(epoch)
    report(Progress("training", epoch, epoch if last else round(run.budget.planned_epochs(
        epoch, row["images_per_s"], len(run.ds))), 1, 1, row["loss"], row["images_per_s"],
        knn_top1=row["knn_top1"], epoch_done=True))


@contextlib.contextmanager
def ctrl_c_at_step_boundary() -> Iterator[Callable[[], bool]]:
    """Within: the first Ctrl-C only raises a flag (checked before each step), the second one interrupts.

    Only where Ctrl-C has Python's default handler (a CLI run): a process that ignores SIGINT or handles it
    itself (a Celery pool process, `npid up`) keeps its own handling, and so does any thread but the main one.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        pressed.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed.is_set
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)


def train(cfg: TrainConfig, on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True) -> dict:
    """Train NPID on cfg.data, evaluate, export. Returns the final metrics (also in metrics.json)."""
    device = local_device(cfg.device)
    d = init_from_env(device)
    show = cfg.progress and d.main
    report = on_progress if (on_progress and d.main) else (lambda p: None)
    report(Progress("loading", epochs=cfg.epochs))
    run = prepare(cfg, device, d, resume, show, ticker("loading", report, should_stop, cfg.epochs))
    cfg = run.cfg  # the recipe has decided its "auto" fields
    run.budget = budget = Budget(cfg.budget_s, cfg.epochs, run.spent_s)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.adapt_threads:
        run.tuner = ThreadTuner(threads)
    if run.d.main and budget.fraction(run.start_epoch) < 1:
        tqdm.write(f"{'epoch':>5} {'loss':>9} {'kNN@1':>7} {'lr':>8} {'img/s':>8} {'time':>7}")
    epoch = run.start_epoch
    with ctrl_c_at_step_boundary() as interrupted:
        stop = (lambda: interrupted() or should_stop()) if should_stop else interrupted
        while budget.fraction(epoch, d) < 1.0:
            progress = run.resumed if epoch == run.start_epoch and run.resumed else EpochProgress()
            try:
                row = train_epoch(run, epoch, progress, report, stop, show)
            except TrainingCancelled:
                run.save_checkpoint(epoch, progress)  # the steps done so far: a rerun resumes from here
                run.checkpoints.wait()
                if interrupted():
                    raise KeyboardInterrupt(f"interrupted at epoch {epoch + 1} step {progress.step + 1}; "
                                            f"checkpoint in {run.checkpoints.path}") from None
                raise
            if row is None:  # the budget ran out as this epoch began: the run ends with the epochs before it
                run.save_checkpoint(epoch)
                break
            epoch += 1
            last = row["partial"] or budget.fraction(epoch, d) >= 1.0
            end_epoch(run, row, last, progress, report)
    train_seconds = budget.elapsed()
    torch.set_num_threads(threads)  # the embedding and the evaluation after training take every thread given
    run.checkpoints.wait()
    if not run.d.main:
        return {}
    return finish(cfg, run.learner.encoder, run.ds, run.eval_ds, run.pre, run.device, run.out, run.history, report,
                  should_stop, train_seconds, run.planned_epochs)


def epochs_done(history: list[dict]) -> float:
    """Epochs trained, a partial last epoch counted by its share of steps (a resumed epoch's rows add up)."""
    done: dict[int, float] = {}
    for row in history:
        share = row["steps"] / row["epoch_steps"] if row.get("partial") and row.get("epoch_steps") else 1.0
        done[row["epoch"]] = min(done.get(row["epoch"], 0.0) + share, 1.0)
    return round(sum(done.values()), 3)


def finish(cfg: TrainConfig, encoder: Encoder, ds, eval_ds, pre: Preprocess, device, out: Path,
           history: list[dict], report: Callable[[Progress], None],
           should_stop: Callable[[], bool] | None, train_seconds: float, planned_epochs: float | None) -> dict:
    """Final evaluation, pictures and the export (rank 0 only)."""
    done = epochs_done(history)
    report(Progress("embedding", math.ceil(done), math.ceil(done)))
    if history:
        plot_curves(history, out / "curves.png")
    train_f, metrics = final_evaluation(encoder, ds, eval_ds, pre, cfg.knn_k, cfg.tau, device, out, cfg.seed,
                                        cfg.progress, ticker("embedding", report, should_stop, math.ceil(done)))
    metrics.update({"images": len(ds), "skipped": len(ds.skipped), "epochs": done, "epochs_planned": planned_epochs,
                    "train_seconds": round(train_seconds, 2), "budget_s": cfg.budget_s, "epoch_cap": cfg.epochs,
                    "final_loss": history[-1]["loss"] if history else None})
    if should_stop and should_stop():
        raise TrainingCancelled("cancelled before export")
    report(Progress("exporting", math.ceil(done), math.ceil(done)))
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
