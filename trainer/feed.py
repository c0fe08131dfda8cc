"""Feeding batches to the training step: the device-side path (cached uint8 squares) and the PIL loader path.

Both yield, per step, (x: b x 3 x S x S normalised, idx: b local instance ids, B: the global batch size).
Every random choice is a function of (seed, epoch, step), so an epoch replays exactly after a resume,
and with torchrun each rank takes its slice of the same global batch.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator

import numpy as np
import torch

from .augment import DeviceAugment, train_transform
from .config import AugmentConfig
from .data import ImageFolder
from .distributed import Dist
from .preprocess import Preprocess

log = logging.getLogger(__name__)

DEVICE_PATH_MAX_BYTES = 4 << 30  # uint8 images kept resident in accelerator memory up to this size


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (seed, epoch, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFF_FFFF_FFFF_FFFF
    return h


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches: a seeded permutation, the last partial batch dropped (kept if it is all)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    if n <= batch_size:
        return [order]
    return list(order[: n - n % batch_size].split(batch_size))


def local_slice(batch: torch.Tensor, d: Dist) -> torch.Tensor:
    if batch.numel() % d.world:
        raise ValueError(f"global batch {batch.numel()} is not divisible by {d.world} ranks")
    b = batch.numel() // d.world
    return batch[d.rank * b:(d.rank + 1) * b]


class DeviceFeed:
    """uint8 images (S x S, S >= the training size) cropped and augmented in batch on the device.

    On an accelerator the images live in its memory when they fit DEVICE_PATH_MAX_BYTES; otherwise (and
    always on the CPU, where host memory is the device's) each batch is gathered from the host array,
    typically the image cache's memory map, so the page cache, not a copy, holds the collection.
    """

    def __init__(self, images: np.ndarray, pre: Preprocess, augment: AugmentConfig, batch_size: int, seed: int,
                 device: torch.device, d: Dist):
        resident = device.type != "cpu" and images.nbytes <= DEVICE_PATH_MAX_BYTES
        self.host = images  # N x S x S x 3 uint8
        self.images = torch.from_numpy(np.array(images)).to(device) if resident else None
        self.augment = DeviceAugment(pre, augment)
        self.batch_size, self.seed, self.device, self.d = batch_size, seed, device, d

    def steps(self, epoch: int) -> int:
        return len(epoch_batches(len(self.host), self.batch_size, self.seed, epoch))

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: b ids on the CPU -> b x S x S x 3 uint8 on the device, from the host array."""
        rows = torch.from_numpy(self.host[idx.numpy()])  # fancy indexing copies out of the memory map
        if self.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The epoch's batches from step `start` on (a resume inside an epoch replays the rest exactly)."""
        _, height, width, _ = self.host.shape
        batches = epoch_batches(len(self.host), self.batch_size, self.seed, epoch)
        order = torch.cat(batches)  # the epoch's ids, sliced per step below
        on_device = order.to(self.device, non_blocking=True) if self.images is not None else None  # one copy
        offset = sum(len(b) for b in batches[:start])
        for step, batch in enumerate(batches[start:], start):
            # drawn on the device for the global batch, so no step waits on the host
            g = torch.Generator(device=self.device).manual_seed(mix_seed(self.seed, epoch, step, 1))
            params = self.augment.sample(len(batch), height, width, g)
            b = len(local_slice(batch, self.d))
            rows = slice(self.d.rank * b, (self.d.rank + 1) * b)  # this rank's share
            if on_device is not None:
                idx = on_device[offset:offset + len(batch)][rows]
                images = self.images[idx]
            else:
                ids = order[offset:offset + len(batch)][rows]
                images, idx = self.gather(ids), ids.to(self.device, non_blocking=True)
            offset += len(batch)
            yield self.augment.apply(images, params.select(rows)), idx, len(batch)


class LoaderFeed:
    """The PIL pipeline through a DataLoader: only where the image cache does not fit its disk budget."""

    def __init__(self, ds: ImageFolder, pre: Preprocess, augment: AugmentConfig, batch_size: int, seed: int,
                 device: torch.device, d: Dist, workers: int):
        if workers and multiprocessing.current_process().daemon:  # e.g. Celery's prefork child
            log.warning("data loader: %d worker processes cannot start inside a daemon process; decoding in "
                        "the training process", workers)
            workers = 0
        ds.transform = train_transform(pre, augment)
        self.ds = ds
        self.batch_size, self.seed, self.device, self.d, self.workers = batch_size, seed, device, d, workers

    def steps(self, epoch: int) -> int:
        return len(epoch_batches(len(self.ds), self.batch_size, self.seed, epoch))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The epoch's batches from step `start` on (after a resume inside an epoch the augmentation draws
        of the remaining steps differ from an uninterrupted run's: the worker seeds follow the batch list)."""
        batches = epoch_batches(len(self.ds), self.batch_size, self.seed, epoch)[start:]
        torch.manual_seed(mix_seed(self.seed, epoch, 2))  # transforms in the main process (workers=0)
        loader = torch.utils.data.DataLoader(
            self.ds, batch_sampler=[local_slice(b, self.d).tolist() for b in batches],
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, 3)),
        )
        for batch, (x, idx) in zip(batches, loader, strict=True):
            yield x.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True), len(batch)
