"""The training recipe: the one module that decides how a collection is trained, and records why.

Every choice is a TrainConfig field, decided from the collection (its size and the median short side of a
seeded sample of its images) and the hardware. Fields given explicitly (a config file, `npid train` flags, a
job's overrides) always win; the reasons for the others travel with the run (config.yaml `extra.policy`,
export.json, the version's manifest) and the recipe's name with them (`extra.recipe`).

Two recipes, the same for `npid train`, a training job and the `npid up` banner:
- "machine" (the default everywhere): on a GPU the paper's recipe; on a CPU the CPU recipe measured in
  docs/cpu-recipe.md (CPU_RECIPE, CPU_PHOTO_RECIPE for photos), trained for the epochs that the CPU budget
  (minutes) buys at the rate this machine is timed at. Collections up to SOFTMAX_MAX_IMAGES use the exact
  softmax (tau 0.1: Table 1's best row, and stable on small collections where NCE's fixed Z is not).
- "paper": TrainConfig's defaults (the authors' CIFAR code) on any hardware: `npid train --recipe paper`, the
  Table 1 reproduction (bench/reproduce_table1.py).
Both then fill the fields left at "auto" (`resolve`): resolution, architecture, width, stem, flip, weight decay.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from .config import TrainConfig
from .data import ArrayImages, open_dataset, scan_folder
from .preprocess import SMALL_IMAGE_MAX, is_small
from .speed import training_rate

log = logging.getLogger(__name__)

RecipeName = Literal["machine", "paper"]
RECIPES: tuple[RecipeName, ...] = ("machine", "paper")

# The paper's ImageNet recipe (Wu et al. 2018, Sec. 4.2): ResNet-50 at 224 px. Used when a GPU trains photos.
GPU_PHOTO_SIZE = 224
GPU_PHOTO_ARCH = "resnet50"
GPU_PHOTO_WIDTH = 64  # torchvision's ResNet-50
# On a CPU: 96 px with the ImageNet stem costs about as much per image as 48 px with the CIFAR stem
# (the stem divides by 4), yet keeps 3x CIFAR's detail; docs/photo-benchmark.md measures 96 vs 128 px.
CPU_PHOTO_SIZE = 96
CPU_PHOTO_MIN_SIZE = 64
CPU_PHOTO_ARCH = "resnet18"  # the paper's CIFAR backbone: the cheapest ResNet that trains well
PAPER_WIDTH = 64  # torchvision's ResNet
SAMPLE_IMAGES = 200  # header reads (no decode): the median of 200 is within a few px of the collection's

SOFTMAX_MAX_IMAGES = 200_000  # up to here the machine recipe trains with the exact softmax (B x n logits a step)
# The CPU recipe (docs/cpu-recipe.md measures each choice at a fixed compute budget). Where it differs from
# the paper: the airnet backbone at width 16 instead of ResNet-18 (about 4x the images per second: at a
# budget of minutes, epochs beat width), the memory bank filled with the network's own embeddings before
# the first step instead of random vectors, batch 32 instead of 128 (4x the steps in the same epochs), a
# cosine schedule sized to the budget instead of 200 epochs with steps.
CPU_RECIPE: dict[str, Any] = {"arch": "airnet", "width": 16, "bank_init": "features", "schedule": "cosine",
                              "batch_size": 32, "lr": 0.03}
# Photos on a CPU (at least 64 px, the ImageNet stem): the recipe measured above is for small images; for
# photos a narrow ResNet-18 keeps the ImageNet stem's 4x cheaper maps (airnet would pay the full resolution),
# with the bank fill, batch and schedule of the CPU recipe.
CPU_PHOTO_RECIPE: dict[str, Any] = {**CPU_RECIPE, "arch": "resnet18", "width": 16}
CPU_TRAIN_MINUTES = 4.0  # the CPU budget when none is given (NPID_CPU_TRAIN_MINUTES, `npid train --minutes`)
MAX_CPU_EPOCHS = 50

Rate = Callable[[TrainConfig], float]  # training images/s of a config on this machine


@dataclass(frozen=True)
class CollectionFacts:
    """What the recipe needs to know of a collection."""

    images: int
    short_side: int | None  # median short side (px) of a seeded sample; None when no header opens


def median_short_side(paths: Sequence[str | Path], seed: int = 0, sample: int = SAMPLE_IMAGES) -> int | None:
    """Median short side (px) of a seeded sample of image files, from their headers only; None if none open."""
    chosen = list(paths) if len(paths) <= sample else random.Random(seed).sample(list(paths), sample)
    sides = []
    for p in chosen:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # a bad file says nothing about the collection; the cache counts it later
    if not sides:
        return None
    sides.sort()
    return sides[len(sides) // 2]


def collection_of(data: str, limit: int = 0) -> CollectionFacts:
    """The collection facts of an image folder (headers only) or of `cifar10:<dir>` (its arrays)."""
    if data.startswith("cifar10:"):
        ds = open_dataset(data, "train", limit)
        assert isinstance(ds, ArrayImages)
        return CollectionFacts(len(ds), ds.images.shape[1])
    paths = scan_folder(data).paths
    paths = paths[:limit] if limit else paths
    return CollectionFacts(len(paths), median_short_side([Path(data) / p for p in paths]))


def decide(explicit: dict[str, Any], collection: CollectionFacts, cuda: bool, recipe: RecipeName = "machine",
           minutes: float = CPU_TRAIN_MINUTES, rate: Rate | None = None) -> TrainConfig:
    """The run's TrainConfig: `plan`, then (machine recipe, CPU, epochs not given) the epochs `minutes` buy."""
    cfg = plan(explicit, collection, cuda, recipe)
    if recipe == "machine" and not cuda and "epochs" not in explicit:
        cfg = fit_cpu_budget(cfg, minutes, collection.images, rate)
    return cfg


def plan(explicit: dict[str, Any], collection: CollectionFacts, cuda: bool,
         recipe: RecipeName = "machine") -> TrainConfig:
    """The recipe's fields, then the explicit ones, then every "auto" field resolved; CPU epochs not yet sized."""
    chosen: dict[str, Any] = {}
    name = "paper"
    if recipe == "machine":
        name = "gpu"  # the paper's recipe, with the exact softmax below
        if not cuda:
            photos = collection.short_side is not None and not is_small(collection.short_side)
            chosen = dict(CPU_PHOTO_RECIPE if photos else CPU_RECIPE)
            name = "cpu-photo" if photos else "cpu"
        if collection.images <= SOFTMAX_MAX_IMAGES:
            chosen.update(objective="softmax", temperature=0.1)
    merged = {**TrainConfig().to_dict(), **chosen, **explicit}
    merged["negatives"] = max(1, min(merged["negatives"], collection.images - 1))
    merged["extra"] = {**merged.get("extra", {}), "recipe": name}
    return resolve(TrainConfig.from_dict(merged), collection.short_side, cuda)


def fit_cpu_budget(cfg: TrainConfig, minutes: float, n_images: int, rate: Rate | None = None) -> TrainConfig:
    """cfg with the epochs that `minutes` of training buy at `rate` (1 to MAX_CPU_EPOCHS), the reason recorded.
    Default rate: trainer/speed.py times a few real steps of this very config here, with the caller's threads."""
    if rate is None:  # timing takes about 1% of a 4-minute budget, at most 2% of a short one
        images_per_s = training_rate(cfg, n_images, torch.device("cpu"), seconds=min(3.0, minutes * 60 / 50))
    else:
        images_per_s = rate(cfg)
    epochs = max(1, min(int(minutes * 60 * images_per_s / max(n_images, 1)), MAX_CPU_EPOCHS))
    reason = (f"{epochs}: {minutes:g} min of training at {images_per_s:.0f} images/s (measured here, "
              f"{torch.get_num_threads()} threads), at most {MAX_CPU_EPOCHS}")
    reasons = {**cfg.extra.get("policy", {}), "epochs": reason}
    return cfg.replace(epochs=epochs, extra={**cfg.extra, "policy": reasons})


@dataclass(frozen=True)
class Choice:
    """What `choose` decided, and why (one reason per field it set)."""

    values: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)


def native_size(short_side: int) -> int:
    """Small images keep their size: the median short side, to a multiple of 8 (>= 16) for the ResNet strides."""
    return max(16, 8 * round(short_side / 8))


def choose(cfg: TrainConfig, short_side: int | None, cuda: bool) -> Choice:
    """Values for cfg's "auto" fields, given the collection's median short side and the hardware."""
    values, reasons = {}, {}
    if cfg.image_size == 0:
        if short_side is None or short_side <= SMALL_IMAGE_MAX:
            side = short_side or 32
            values["image_size"] = native_size(side)
            reasons["image_size"] = f"small images (median short side {short_side} px <= {SMALL_IMAGE_MAX}): " \
                                    "native size"
        elif cuda:
            values["image_size"] = GPU_PHOTO_SIZE
            reasons["image_size"] = f"photos (median short side {short_side} px) on a GPU: the paper's ImageNet " \
                                    f"recipe, {GPU_PHOTO_SIZE} px"
        else:
            values["image_size"] = max(CPU_PHOTO_MIN_SIZE, min(CPU_PHOTO_SIZE, short_side))
            reasons["image_size"] = f"photos (median short side {short_side} px) on a CPU: {CPU_PHOTO_SIZE} px " \
                                    "costs like 48 px with the CIFAR stem"
    size = values.get("image_size", cfg.image_size)
    small = is_small(size)
    if cfg.arch == "auto":
        values["arch"] = GPU_PHOTO_ARCH if (cuda and not small) else CPU_PHOTO_ARCH
        reasons["arch"] = "paper's ImageNet backbone (GPU, photos)" if values["arch"] == GPU_PHOTO_ARCH \
            else "paper's CIFAR backbone" if small else "cheapest ResNet that trains well (CPU)"
    if cfg.width == 0:
        values["width"] = GPU_PHOTO_WIDTH if (cuda and not small) else PAPER_WIDTH
        reasons["width"] = "torchvision's ResNet width"
    if cfg.stem == "auto":
        values["stem"] = "cifar" if small else "imagenet"
        reasons["stem"] = f"{'<=' if small else '>'} {SMALL_IMAGE_MAX} px"
    resolved = cfg.replace(image_size=size)
    if cfg.hflip is None:
        values["hflip"] = resolved.flip
        reasons["hflip"] = "paper's CIFAR code: no flip" if small else "paper's ImageNet code: flip"
    if cfg.weight_decay is None:
        values["weight_decay"] = resolved.decay
        reasons["weight_decay"] = "paper's CIFAR code" if small else "paper's ImageNet code"
    return Choice(values, reasons)


def resolve(cfg: TrainConfig, short_side: int | None, cuda: bool) -> TrainConfig:
    """cfg with every "auto" field decided from the collection's median short side and the hardware.

    The reasons go into cfg.extra["policy"], so config.yaml and the version's export.json carry them.
    """
    choice = choose(cfg, short_side, cuda)
    if not choice.values:
        return cfg
    for name, value in choice.values.items():
        log.info("recipe: %s = %s (%s)", name, value, choice.reasons[name])
    reasons = {**cfg.extra.get("policy", {}), **{k: f"{v}: {choice.reasons[k]}" for k, v in choice.values.items()}}
    return cfg.replace(**choice.values, extra={**cfg.extra, "policy": reasons})
