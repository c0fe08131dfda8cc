"""Image collections: a recursive image folder and the CIFAR-10 arrays.

Every image gets a stable integer instance id (its rank among the sorted relative paths); first-level
sub-folder names become labels, used for evaluation only. Decoding is the one function `load_rgb`,
shared by training, export and the service, so a query is decoded exactly like the collection.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(source: str | Path | IO[bytes], draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file to RGB: first frame, EXIF orientation applied, any mode converted.

    `draft` (width, height): a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still at least that large
    (Pillow's draft mode: a fraction of the memory and time); other formats ignore it.
    Raises OSError / ValueError / Image.DecompressionBombError on unreadable data.
    """
    with Image.open(source) as im:
        if draft is not None and im.format == "JPEG":
            im.draft("RGB", draft)
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image -> RGB: first frame, EXIF orientation applied, 16-bit grey scaled, alpha over white."""
    im.seek(0)  # first frame of GIF / animated WebP / multi-page TIFF
    im.load()
    ImageOps.exif_transpose(im, in_place=True)  # no copy: a 40-MP decode holds one buffer, not three
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bit, keep contrast
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im if im.mode == "RGB" else im.convert("RGB")


@dataclass
class Collection:
    """What every dataset exposes: n instances, optional labels, a relative path per instance."""

    paths: list[str]  # relative paths (or synthetic names for array datasets)
    labels: np.ndarray | None  # int64 [n] or None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def scan_folder(root: str | Path) -> Collection:
    """All images under `root`, sorted by relative path; labels from the first-level folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    if all(t is not None for t in tops):
        classes = sorted(set(tops))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[t] for t in tops], dtype=np.int64)
        return Collection(paths, labels, classes)
    return Collection(paths, None, [])


class ImageFolder(torch.utils.data.Dataset):
    """Recursive image folder returning (transformed image, instance id).

    An unreadable file is replaced by the next readable one and recorded in `skipped`; call
    `validate()` once up front to drop bad files before training (ids stay dense and stable).
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, limit: int = 0,
                 collection: Collection | None = None):
        """collection: these files of root (e.g. the ones an export embedded), instead of scanning it."""
        self.root = Path(root)
        self.collection = collection or scan_folder(self.root)
        if limit:
            self.collection = Collection(
                self.collection.paths[:limit],
                None if self.collection.labels is None else self.collection.labels[:limit],
                self.collection.classes,
            )
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.collection)

    def load(self, i: int) -> Image.Image:
        return load_rgb(self.root / self.collection.paths[i])

    def validate(self, progress: bool = False) -> list[tuple[str, str]]:
        """Decode every file once; drop the unreadable ones. Returns [(path, reason)] of skipped files."""
        from tqdm import tqdm

        keep, bad = [], []
        for i in tqdm(range(len(self)), desc="checking images", disable=not progress, leave=False):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(self.root / self.collection.paths[i]) as im:
                        im.load()
                keep.append(i)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
                    Image.DecompressionBombError) as e:
                bad.append((self.collection.paths[i], f"{type(e).__name__}: {e}"))
        for path, reason in bad:
            log.warning("skipping unreadable image %s (%s)", path, reason)
        if bad:
            labels = self.collection.labels
            self.collection = Collection(
                [self.collection.paths[i] for i in keep],
                None if labels is None else labels[keep],
                self.collection.classes,
            )
        self.skipped = bad
        return bad

    def __getitem__(self, i: int):
        img = self.load(i)
        return (self.transform(img) if self.transform else img), i


class ArrayImages(torch.utils.data.Dataset):
    """uint8 images [n, H, W, 3] in memory (CIFAR-10 arrays, or a decoded small-image folder)."""

    def __init__(self, images: np.ndarray, collection: Collection, transform: Callable | None = None):
        assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8, images.shape
        self.images = images
        self.collection = collection
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int):
        img = self.load(i)
        return (self.transform(img) if self.transform else img), i


def load_cifar10(directory: str | Path, split: str = "train") -> ArrayImages:
    """CIFAR-10 `.npz` arrays (see shared/data/cifar10/README.md). split: train | test (first 1,000)."""
    directory = Path(directory)
    files = ([directory / f"data_batch_{i}.npz" for i in range(1, 6)] if split == "train"
             else [directory / "test_batch_first1000.npz"])
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 arrays missing: {', '.join(missing)}")
    parts = [np.load(f) for f in files]
    images = np.concatenate([p["images"] for p in parts])  # N x 32 x 32 x 3 uint8
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
    names = [f"{split}/{CIFAR10_CLASSES[y]}/{i:05d}" for i, y in enumerate(labels)]
    return ArrayImages(images, Collection(names, labels, list(CIFAR10_CLASSES)))


def open_dataset(spec: str, split: str = "train", limit: int = 0) -> ImageFolder | ArrayImages:
    """`cifar10:<dir>` (split train|test) or an image folder path."""
    if spec.startswith("cifar10:"):
        ds = load_cifar10(spec.split(":", 1)[1], split)
        if limit:
            coll = ds.collection
            ds = ArrayImages(ds.images[:limit], Collection(coll.paths[:limit], coll.labels[:limit],
                                                           coll.classes))
        return ds
    return ImageFolder(spec, limit=limit)
