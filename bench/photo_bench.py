"""Photo collections: training input paths side by side, the cache's first decode, a photo job end to end.

Results: docs/photo-benchmark.md. The photos are generated (tests/photos.py: CIFAR-10 images upscaled to a
150-420 px short side, or --short MIN MAX, random aspect, some EXIF-rotated JPEGs), so nothing downloads.

    python bench/photo_bench.py train --photos 512 --sizes 96 128 --steps 6
    python bench/photo_bench.py --short 1000 2000 train --photos 512     # camera-size photos
    python bench/photo_bench.py cache --photos 10000
    python bench/photo_bench.py job --photos 5000 --redis-url redis://127.0.0.1:6379/11

train: one model (ResNet-18, ImageNet stem, --width), one batch size; per image size, full training steps
(augment + forward + backward + bank update) fed by the PIL loader (DataLoader, --workers processes) and by
the image cache + DeviceAugment, alternated in one run so both see the same machine load. The cache's
build time is reported apart (it is paid once per collection, not per epoch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import photos  # noqa: E402

from bench.trainer_bench import machine  # noqa: E402
from trainer.cache import cached_folder  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.feed import DeviceFeed, LoaderFeed  # noqa: E402
from trainer.model import build_encoder  # noqa: E402
from trainer.objective import NPIDObjective  # noqa: E402
from trainer.preprocess import Preprocess  # noqa: E402
from trainer.step import Learner, step_noise, train_step  # noqa: E402

SMALL_PHOTOS = (150, 420)  # the folder: web-size photos (tests/photos.py's default)


def photo_folder(data: Path, n: int, short: tuple[int, int]) -> Path:
    """The generated folder of n photos with a short side in `short` px, reused between runs."""
    directory = data / f"photos-{n}" if short == SMALL_PHOTOS else data / f"photos-{n}-{short[0]}-{short[1]}px"
    marker = directory / f".complete-{n}"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        t0 = time.perf_counter()
        photos.make_photo_folder(directory, n, seed=0, short=short)
        marker.touch()
        print(f"generated {n} photos in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return directory


def timed_images_per_s(batches, steps: int, work) -> float:
    """Images/s of `work(step, x, idx, b)` over `steps` batches after one warm-up batch (not counted)."""
    seen, t0 = 0, None
    for step, (x, idx, b) in enumerate(batches):
        work(step, x, idx, b)
        if step == 0:
            t0 = time.perf_counter()
            continue
        seen += b
        if step == steps:
            break
    return seen / (time.perf_counter() - t0)


def steps_per_s(feed, learner: Learner, cfg: TrainConfig, steps: int) -> float:
    """Images/s of full training steps."""
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.01, momentum=0.9)

    def step_once(step, x, idx, b):
        noise = step_noise(learner.objective, cfg.seed, 0, step, b, Dist())
        train_step(learner, learner.objective, optimizer, x, idx, noise, Dist())

    return timed_images_per_s(feed.epoch(0), steps, step_once)


def input_per_s(feed, steps: int) -> float:
    """Images/s of the input path alone: batches decoded/gathered and augmented, no model."""

    def check(step, x, idx, b):
        assert x.dtype == torch.float32

    return timed_images_per_s(feed.epoch(1), steps, check)


def bench_train(args) -> None:
    folder = photo_folder(args.data, args.photos, tuple(args.short))
    cache = Path(tempfile.mkdtemp(prefix="npid-photo-cache-"))
    rows = []
    for size in args.sizes:
        pre = Preprocess.for_size(size, IMAGENET_MEAN, IMAGENET_STD)
        cfg = TrainConfig(data=str(folder), image_size=size, arch="resnet18", width=args.width, stem="imagenet",
                          dim=128, objective="nce", negatives=min(4096, args.photos - 1), batch_size=args.batch,
                          hflip=True)
        t0 = time.perf_counter()
        cached = cached_folder(folder, pre, cache, threads=torch.get_num_threads())
        build_s = time.perf_counter() - t0
        ds = ImageFolder(folder)
        n = len(cached)
        torch.manual_seed(0)
        learner = Learner(build_encoder("resnet18", 128, size, args.width, "imagenet"),
                          NPIDObjective(cfg, n, torch.Generator().manual_seed(1)))
        cpu = torch.device("cpu")
        feeds = {"PIL loader": LoaderFeed(ds, pre, cfg.augmentation, args.batch, 0, cpu, Dist(), args.workers),
                 "cache + device augment": DeviceFeed(cached.images, pre, cfg.augmentation, args.batch, 0, cpu, Dist())}
        rates: dict[str, list[float]] = {k: [] for k in feeds}
        inputs: dict[str, list[float]] = {k: [] for k in feeds}
        for _ in range(args.rounds):  # alternate, so both paths see the same load
            for name, feed in feeds.items():
                rates[name].append(steps_per_s(feed, learner, cfg, args.steps))
                inputs[name].append(input_per_s(feed, args.steps))
        best = {k: max(v) for k, v in rates.items()}
        best_in = {k: max(v) for k, v in inputs.items()}
        pil, dev = "PIL loader", "cache + device augment"
        rows.append(f"| {size} | {pre.stored_size} | {best[pil]:.1f} | {best[dev]:.1f} | {best[dev] / best[pil]:.2f}x "
                    f"| {best_in[pil]:.0f} | {best_in[dev]:.0f} | {best_in[dev] / best_in[pil]:.2f}x | {build_s:.1f} |")
    shutil.rmtree(cache, ignore_errors=True)
    print(f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
          f"Model: ResNet-18 width {args.width}, ImageNet stem, NCE {min(4096, args.photos - 1)} noise samples, "
          f"batch {args.batch}; torch threads {torch.get_num_threads()}; "
          f"{args.photos} photos; best of {args.rounds} alternated rounds of {args.steps} steps; "
          f"loader workers {args.workers}\n")
    print("| px | stored px | training img/s, PIL loader | training img/s, cache + device | ratio "
          "| input only img/s, PIL loader | input only img/s, cache + device | ratio | cache build s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def bench_cache(args) -> None:
    folder = photo_folder(args.data, args.photos, tuple(args.short))
    size_on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    cache = Path(tempfile.mkdtemp(prefix="npid-photo-cache-"))
    print(f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
          f"{args.photos} photos, {size_on_disk / 2**20:.0f} MiB of JPEG/PNG; decode threads "
          f"{torch.get_num_threads()}\n")
    print("| train px | stored px | first decode img/s | second run (reuse) s | cache MiB | MiB per 1k |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        pre = Preprocess.for_size(size, IMAGENET_MEAN, IMAGENET_STD)
        first = cached_folder(folder, pre, cache, threads=torch.get_num_threads()).report
        again = cached_folder(folder, pre, cache, threads=torch.get_num_threads()).report
        mib = first.bytes / 2**20
        print(f"| {size} | {pre.stored_size} | {first.decoded / first.seconds:.0f} | {again.seconds:.2f} | "
              f"{mib:.0f} | {mib / args.photos * 1000:.1f} |")
    shutil.rmtree(cache, ignore_errors=True)


def bench_job(args) -> None:
    from bench.jobs_bench import run_job, start_stack

    folder = photo_folder(args.data, args.photos, tuple(args.short))
    artifacts = Path(tempfile.mkdtemp(prefix="npid-photo-job-"))
    procs, base = start_stack(folder.resolve(), artifacts, args.redis_url, args.minutes, args.port)
    try:
        job, phases = run_job(base, {})
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    cfg = job["metrics"]["train_config"]
    print(f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
          f"Collection: {job['metrics']['images']} photos; the recipe and CPU budget chose {cfg['image_size']} px, "
          f"{cfg['arch']} width {cfg['width']} ({cfg['stem']} stem), {cfg['epochs']} epoch(s), {cfg['objective']}, "
          f"batch {cfg['batch_size']}\n")
    print("| phase | seconds |\n| --- | --- |")
    print("\n".join(f"| {name} | {sec:.1f} |" for name, sec in phases.items()))
    shutil.rmtree(artifacts, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "npid-photo-bench")
    p.add_argument("--short", type=int, nargs=2, default=list(SMALL_PHOTOS), metavar=("MIN", "MAX"),
                   help="the generated photos' short side in px (e.g. 1000 2000: camera-size photos)")
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--photos", type=int, default=512)
    t.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("cache")
    c.add_argument("--photos", type=int, default=10_000)
    c.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    j = sub.add_parser("job")
    j.add_argument("--photos", type=int, default=5000)
    j.add_argument("--minutes", type=float, default=4.0, help="NPID_CPU_TRAIN_MINUTES")
    j.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    j.add_argument("--port", type=int, default=8411)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); the job worker uses cores - 1 (1 on a 2-core host)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": bench_train, "cache": bench_cache, "job": bench_job}[args.what](args)


if __name__ == "__main__":
    main()
