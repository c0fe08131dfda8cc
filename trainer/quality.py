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

The same sample calibrates the near-duplicate threshold (GET /duplicates), again without labels: for up to
COPY_SAMPLE_SIZE sampled images, one seeded *copy* of each (`copy_view`: a crop of 60-90% of the area, a
resize, a JPEG re-encode at quality 30-90, a small colour shift, a mirror half of the time: the copies people
keep) is embedded and compared with its image's stored embedding, and each image's stored embedding with its
nearest other image of the collection:

    duplicate_threshold     the cosine that best separates the two (`separating_threshold`), raised where needed
                            so that at most DUPLICATE_MAX_LINKED of the images reach their nearest other image
    duplicate_recall        % of the copies at or above it
    duplicate_nearest_above % of the images whose nearest other image is at or above it
    duplicate_sample        copies measured

Duplicates are rare in a collection and every distinct image above the threshold adds a wrong link, so where a
model's copies and neighbours overlap (a young model: docs/duplicates-benchmark.md) precision comes first.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from durable import atomic_write

from .augment import DeviceAugment
from .config import AugmentConfig
from .data import ArrayImages, ImageFolder
from .model import Encoder
from .preprocess import Preprocess

SAMPLE_SIZE = 1000  # images whose views are searched; standard error of a 50% rate: 1.6 points
SAMPLE_SEED = 0
GATE_FIGURE = "self_top1"
COPY_SAMPLE_SIZE = 500  # sampled images whose copies calibrate the duplicate threshold
COPY_AREA = (0.6, 0.9)  # share of the image a copy's crop keeps
COPY_SCALE = (0.75, 1.5)  # a copy's size against the crop's
COPY_JPEG_QUALITY = (30, 90)
COPY_COLOUR = 0.1  # brightness, contrast and saturation change by up to this factor either way
DUPLICATE_MAX_LINKED = 0.05  # share of images the default threshold may link to their nearest (distinct) other
NEAREST_CHUNK = 65536  # gallery rows compared at a time when finding each sampled image's nearest other


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
            "sample_size": len(ids), "seed": seed,
            **copy_figures(encoder, images, ids, gallery, pre, seed, batch_size)}


# ---------------------------------------------------------------------------- near-duplicate threshold


def copy_view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of an RGB image as people make them: a crop of 60-90% of the area (aspect 3:4 to 4:3, anywhere),
    resized by 0.75-1.5x, colours shifted by up to 10%, mirrored half of the time, re-encoded as JPEG at
    quality 30-90."""
    width, height = img.size
    area = rng.uniform(*COPY_AREA) * width * height
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(width, max(1, round(math.sqrt(area * aspect))))
    ch = min(height, max(1, round(math.sqrt(area / aspect))))
    left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    scale = rng.uniform(*COPY_SCALE)
    out = out.resize((max(8, round(cw * scale)), max(8, round(ch * scale))), Image.Resampling.BICUBIC)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(1.0 + rng.uniform(-COPY_COLOUR, COPY_COLOUR))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(COPY_JPEG_QUALITY[0], COPY_JPEG_QUALITY[1] + 1)))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def copy_views(images: Sequence[Image.Image], seed: int = SAMPLE_SEED) -> list[Image.Image]:
    """One seeded copy (`copy_view`) of each image."""
    rng = np.random.default_rng([seed, 0xC0B1])
    return [copy_view(img, rng) for img in images]


def separating_threshold(same: np.ndarray, other: np.ndarray) -> float:
    """The cosine t that best separates copies (`same`: cosines of images to their copies) from distinct images
    (`other`: cosines of images to their nearest other image): t minimises the share of copies below t plus
    the share of distinct pairs at or above it (equal error weights), and sits midway between the two
    neighbouring observed cosines where it can move without changing either share. A collection that holds
    duplicates itself has some in `other`: they cost the threshold a little of its recall there, never its
    sense."""
    same, other = np.sort(np.asarray(same, np.float64)), np.sort(np.asarray(other, np.float64))
    if not len(same) or not len(other):
        raise ValueError("both cosine samples must be non-empty")
    values = np.unique(np.concatenate([same, other]))  # the candidate thresholds: each observed cosine
    missed = np.searchsorted(same, values, side="left") / len(same)  # share of copies < t
    false = 1.0 - np.searchsorted(other, values, side="left") / len(other)  # share of others >= t
    best = int(np.argmin(missed + false))  # the lowest of the equal minima
    # the errors stay the same for t in (values[best - 1], values[best]]: take the middle of that gap
    low = values[best - 1] if best > 0 else max(-1.0, values[best] - 1e-6)
    return float(np.clip((low + values[best]) / 2.0, -1.0, 1.0))


def duplicate_threshold(same: np.ndarray, other: np.ndarray, max_linked: float = DUPLICATE_MAX_LINKED) -> float:
    """`separating_threshold`, or the (1 - max_linked) quantile of `other` where that is higher: the point that
    minimises the two error rates, never letting more than `max_linked` of the images through to their nearest
    other image."""
    return max(separating_threshold(same, other), float(np.quantile(np.asarray(other, np.float64), 1 - max_linked)))


def duplicate_figures(same: np.ndarray, other: np.ndarray) -> dict:
    """The threshold of `duplicate_threshold` with the share of copies and of nearest others it keeps."""
    threshold = duplicate_threshold(same, other)
    return {"duplicate_threshold": threshold,
            "duplicate_recall": 100.0 * float(np.mean(np.asarray(same) >= threshold)),
            "duplicate_nearest_above": 100.0 * float(np.mean(np.asarray(other) >= threshold)),
            "duplicate_sample": len(same)}


def nearest_other(queries: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor,
                  chunk: int = NEAREST_CHUNK) -> torch.Tensor:
    """queries: SxD unit (row `rows[i]` of gallery each), gallery: NxD unit -> S: each query's highest cosine to
    another row of the gallery (-inf when there is none). Chunked over the gallery: memory S x chunk."""
    best = torch.full((len(queries),), -math.inf, device=queries.device)
    for start in range(0, len(gallery), chunk):
        sims = queries @ gallery[start:start + chunk].float().t()  # S x c
        own = (rows >= start) & (rows < start + sims.shape[1])
        sims[own, (rows[own] - start)] = -math.inf
        best = torch.maximum(best, sims.max(1).values)
    return best


def copy_figures(encoder: Encoder, images: np.ndarray, ids: np.ndarray, gallery: torch.Tensor, pre: Preprocess,
                 seed: int = SAMPLE_SEED, batch_size: int = 256, size: int = COPY_SAMPLE_SIZE) -> dict:
    """`duplicate_figures` of `encoder` on (up to `size` of) the sampled images (`copy_cosines`); {} when the
    gallery has fewer than two images."""
    if len(gallery) < 2 or not len(ids):
        return {}
    return duplicate_figures(*copy_cosines(encoder, images, ids, gallery, pre, seed, batch_size, size))


@torch.no_grad()
def copy_cosines(encoder: Encoder, images: np.ndarray, ids: np.ndarray, gallery: torch.Tensor, pre: Preprocess,
                 seed: int = SAMPLE_SEED, batch_size: int = 256, size: int = COPY_SAMPLE_SIZE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(same, other) for up to `size` of the sampled images: the cosine of each one's copy to its stored embedding
    (gallery row), and of its stored embedding to its nearest other image of the gallery."""
    pick = sample_ids(len(ids), size, seed)  # rows of the sample
    squares = [Image.fromarray(images[i]) for i in pick]
    transform = pre.eval_transform()
    views = []
    for i in range(0, len(pick), batch_size):
        batch = torch.stack([transform(v) for v in copy_views(squares[i:i + batch_size], seed + i)])
        views.append(encoder(batch.to(gallery.device)).float())  # b x D
    rows = torch.from_numpy(ids[pick]).to(gallery.device)
    own = gallery[rows].float()  # S x D: the stored embeddings
    same = (torch.cat(views) * own).sum(1)
    other = nearest_other(own, gallery, rows)
    return same.cpu().numpy(), other.cpu().numpy()


def record_in_export(export_dir: str | Path, quality: dict) -> None:
    """Add `quality` to export.json (atomically): the index copies it into the version's manifest."""
    path = Path(export_dir) / "export.json"
    meta = json.loads(path.read_text())
    meta["quality"] = quality  # the index copies it into the version's manifest (index/artifact.py)
    atomic_write(path, json.dumps(meta, indent=2).encode())
