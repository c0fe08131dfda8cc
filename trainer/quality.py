"""Label-free quality of a version: does an augmented view of an image find that image in the collection?

NPID trains every image to be its own class under the training augmentations, so the natural figure that
needs no labels is the task itself, measured on the finished embeddings: for a fixed, seeded sample of the
collection, embed one augmented view of each sampled image (the training augmentation, seeded) and search
it among the whole collection's embeddings (eval transform, what the index serves):

    self_top1, self_top10   % of views whose own image is the nearest / among the 10 nearest
    alignment               E ||f(view) - f(image)||^2 over the sample (Wang & Isola 2020; lower is better)
    uniformity              log E exp(-2 ||f_i - f_j||^2) over pairs of sampled images (lower: more spread)

A random or collapsed encoder scores low on self-retrieval (views land among look-alikes or everything is
alike); a useful one scores high. docs/cpu-recipe.md shows that it orders versions as leave-one-out kNN
does. `self_top1` is the figure the promotion gate and the background trainer compare.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from durable import atomic_write

from .augment import DeviceAugment
from .config import AugmentConfig
from .data import ArrayImages, ImageFolder
from .model import Encoder
from .preprocess import Preprocess

SAMPLE_SIZE = 1000  # images whose views are searched; standard error of a 50% rate: 1.6 points
SAMPLE_SEED = 0
GATE_FIGURE = "self_top1"


def sample_ids(n: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """The fixed sample: `size` distinct ids of 0..n-1 drawn with `seed`, sorted (all of them when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def sample_key(paths: list[str], ids: np.ndarray, seed: int, hflip: bool = False) -> str:
    """Names the (gallery, sample, seed, views) a figure was measured on: equal keys, comparable figures."""
    h = hashlib.sha256(f"{seed}:{len(paths)}:".encode() + (b"flip:" if hflip else b""))
    for p in paths:
        h.update(p.encode() + b"\0")
    h.update(ids.astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def load_sample(ds: ImageFolder | ArrayImages, ids: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The sampled images as the image cache stores them (`pre.fit`): S x C x C x 3 uint8, C = pre.stored_size."""
    side = pre.stored_size
    out = np.empty((len(ids), side, side, 3), dtype=np.uint8)
    for row, i in enumerate(ids):
        out[row] = np.asarray(pre.fit(ds.load(int(i))))
    return out


def self_retrieval(views: torch.Tensor, gallery: torch.Tensor, ids: torch.Tensor,
                   ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """views: SxD unit, gallery: NxD unit, ids: S (each view's own row) -> {"self_top1": %, "self_top10": %}."""
    sims = views @ gallery.t()  # S x N
    own = sims.gather(1, ids[:, None])  # S x 1
    rank = (sims > own).sum(1)  # S: rows strictly closer than the view's own image (ties count for it)
    return {f"self_top{k}": 100.0 * (rank < k).float().mean().item() for k in ks}


def alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """E ||a_i - b_i||^2 over matching unit rows. a, b: SxD."""
    return (a - b).pow(2).sum(1).mean().item()


def uniformity(f: torch.Tensor, t: float = 2.0) -> float:
    """log of the mean over pairs i != j of exp(-t ||f_i - f_j||^2). f: SxD unit rows, S >= 2."""
    d2 = torch.cdist(f, f).pow(2)  # S x S
    off = ~torch.eye(len(f), dtype=torch.bool, device=f.device)
    return torch.logsumexp(-t * d2[off], 0).item() - float(np.log(off.sum().item()))


@torch.no_grad()
def measure(encoder: Encoder, images: np.ndarray, ids: np.ndarray, gallery: torch.Tensor, pre: Preprocess,
            hflip: bool, seed: int = SAMPLE_SEED, batch_size: int = 256) -> dict[str, float]:
    """The label-free figures of `encoder` on a sample.

    images: S x H x W x 3 uint8 (the sampled images), ids: their rows in gallery (N x D, the collection's
    embeddings by this encoder). One seeded training-augmentation view per image.
    """
    encoder.eval()
    device = gallery.device
    x = torch.from_numpy(images).to(device)  # S x H x W x 3 uint8
    augment = DeviceAugment(pre, AugmentConfig(hflip=hflip))
    g = torch.Generator(device=device).manual_seed(seed)
    params = augment.sample(len(x), x.shape[1], x.shape[2], g)
    views, plain = [], []
    for i in range(0, len(x), batch_size):
        rows = slice(i, min(i + batch_size, len(x)))
        views.append(encoder(augment.apply(x[rows], params.select(rows))).float())  # b x D
        plain.append(encoder(pre.device_eval(x[rows])).float())  # b x D: the eval transform
    v, p = torch.cat(views), torch.cat(plain)  # S x D each
    own = torch.from_numpy(ids).to(device)
    return {**self_retrieval(v, gallery.float(), own), "alignment": alignment(v, p), "uniformity": uniformity(p),
            "sample_size": len(ids), "seed": seed}


def record_in_export(export_dir: str | Path, quality: dict) -> None:
    """Add `quality` to export.json (atomically): the index copies it into the version's manifest."""
    path = Path(export_dir) / "export.json"
    meta = json.loads(path.read_text())
    meta["quality"] = quality  # the index copies it into the version's manifest (index/artifact.py)
    atomic_write(path, json.dumps(meta, indent=2).encode())
