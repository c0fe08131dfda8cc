"""Feeding batches to the training step: the device-side path and the PIL loader path.

Both yield, per step, (x: b x 3 x S x S normalised, idx: b local instance ids, B: the global batch size).
Every random choice is a function of (seed, epoch, step), so an epoch replays exactly after a resume,
and with torchrun each rank takes its slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .augment import AugmentConfig, DeviceAugment, Preprocess, train_transform
from .data import ImageFolder
from .distributed import Dist

DEVICE_PATH_MAX_BYTES = 4 << 30  # uint8 images kept on the device up to this size


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
    """uint8 images held in device memory, augmented in batch with tensor ops."""

    def __init__(self, images: np.ndarray, pre: Preprocess, augment: AugmentConfig, batch_size: int, seed: int,
                 device: torch.device, d: Dist):
        self.images = torch.from_numpy(images).to(device)  # N x H x W x 3 uint8
        self.augment = DeviceAugment(pre, augment)
        self.batch_size, self.seed, self.device, self.d = batch_size, seed, device, d

    def steps(self, epoch: int) -> int:
        return len(epoch_batches(len(self.images), self.batch_size, self.seed, epoch))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The epoch's batches from step `start` on (a resume inside an epoch replays the rest exactly)."""
        _, height, width, _ = self.images.shape
        batches = epoch_batches(len(self.images), self.batch_size, self.seed, epoch)
        order = torch.cat(batches)  # the epoch's ids, copied to the device once and sliced per step below
        if self.device.type == "cuda":
            order = order.pin_memory()
        order = order.to(self.device, non_blocking=True)
        offset = sum(len(b) for b in batches[:start])
        for step, batch in enumerate(batches[start:], start):
            # drawn on the device for the global batch, so no step waits on the host
            g = torch.Generator(device=self.device).manual_seed(mix_seed(self.seed, epoch, step, 1))
            params = self.augment.sample(len(batch), height, width, g)
            b = len(local_slice(batch, self.d))
            rows = slice(self.d.rank * b, (self.d.rank + 1) * b)  # this rank's share
            idx = order[offset:offset + len(batch)][rows]
            offset += len(batch)
            yield self.augment.apply(self.images[idx], params.select(rows)), idx, len(batch)


class LoaderFeed:
    """The PIL pipeline through a DataLoader, for collections of large images."""

    def __init__(self, ds: ImageFolder, pre: Preprocess, augment: AugmentConfig, batch_size: int, seed: int,
                 device: torch.device, d: Dist, workers: int):
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
