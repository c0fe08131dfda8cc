"""The training recipe: the one module that decides how a collection is trained, and records why.

Every choice is a TrainConfig field, decided from the collection (its size and the median short side of a
seeded sample of its images) and the hardware. Fields given explicitly (a config file, `npid train` flags, a
job's overrides) always win; the reasons for the others travel with the run (config.yaml `extra.policy`,
export.json, the version's manifest) and the recipe's name with them (`extra.recipe`).

Two recipes, the same for `npid train`, a training job and the `npid up` banner:
- "machine" (the default everywhere): on a GPU the paper's recipe; on a CPU the CPU recipe measured in
  docs/cpu-recipe.md (CPU_RECIPE, CPU_PHOTO_RECIPE for photos), trained for a wall-clock budget (the CPU budget,
  minutes: a deadline, trainer/budget.py; as many epochs as it buys). Collections up to SOFTMAX_MAX_IMAGES use
  the exact softmax (tau 0.1: Table 1's best row, and stable on small collections where NCE's fixed Z is not).
- "paper": TrainConfig's defaults (the authors' CIFAR code) on any hardware: `npid train --recipe paper`, the
  Table 1 reproduction (bench/reproduce_table1.py).
Both then fill the fields left at "auto" (`resolve`): resolution, architecture, width, stem, flip, weight decay.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .config import TrainConfig
from .data import ArrayImages, open_dataset, scan_folder
from .preprocess import SMALL_IMAGE_MAX, is_small

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
           minutes: float = CPU_TRAIN_MINUTES) -> TrainConfig:
    """The run's TrainConfig: `plan`, then, for the machine recipe on a CPU, a time budget of `minutes` (a
    deadline: trainer/budget.py) unless one is given; an explicit `epochs` caps a budget, else none does."""
    cfg = plan(explicit, collection, cuda, recipe)
    if recipe == "machine" and not cuda and "minutes" not in explicit:
        return with_budget(cfg, minutes, "the CPU budget (NPID_CPU_TRAIN_MINUTES, npid train --minutes)",
                           capped="epochs" in explicit)
    if cfg.minutes > 0:
        return with_budget(cfg, cfg.minutes, "asked for", capped="epochs" in explicit)
    return cfg


def with_budget(cfg: TrainConfig, minutes: float, why: str, capped: bool) -> TrainConfig:
    """cfg trained for `minutes` of wall clock; its epochs cap the run only when they were given (`capped`)."""
    reasons = {**cfg.extra.get("policy", {}),
               "minutes": f"{minutes:g}: {why}; the learning-rate schedule follows the share of it spent",
               "epochs": f"{cfg.epochs}: given, a cap" if capped else "as many as the time budget buys (no cap)"}
    return cfg.replace(minutes=minutes, epochs=cfg.epochs if capped else 0, extra={**cfg.extra, "policy": reasons})


def plan(explicit: dict[str, Any], collection: CollectionFacts, cuda: bool,
         recipe: RecipeName = "machine") -> TrainConfig:
    """The recipe's fields, then the explicit ones, then every "auto" field resolved; no time budget yet."""
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
    return within_reach(resolve(TrainConfig.from_dict(merged), collection.short_side, cuda), collection)


def within_reach(cfg: TrainConfig, collection: CollectionFacts) -> TrainConfig:
    """cfg with what cannot run well on this collection brought within reach, the reason recorded: a batch larger
    than the collection (no step could be taken), and a resolution far above the images' own with the small-image
    stem (full-resolution feature maps: the memory and time of a photo network, for upscaled pixels)."""
    changes, reasons = {}, {}
    if cfg.batch_size > collection.images:
        changes["batch_size"] = collection.images
        reasons["batch_size"] = f"{collection.images}: at most the collection's {collection.images} images " \
                                f"(asked {cfg.batch_size})"
    side = collection.short_side
    if side is not None and cfg.stem == "cifar" and cfg.image_size > max(2 * side, SMALL_IMAGE_MAX):
        changes["image_size"] = max(native_size(side), min(cfg.image_size, SMALL_IMAGE_MAX))
        reasons["image_size"] = (f"{changes['image_size']}: the small-image stem keeps full resolution; "
                                 f"{cfg.image_size} px is far above the images' own {side} px (asked {cfg.image_size})")
    if not changes:
        return cfg
    for name, reason in reasons.items():
        log.warning("recipe: %s = %s", name, reason)
    return cfg.replace(**changes, extra={**cfg.extra, "policy": {**cfg.extra.get("policy", {}), **reasons}})


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
