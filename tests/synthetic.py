"""Generated image collections for tests: classes differ by a fine texture, never by colour.

Each image is one texture filling the whole image, light on a dark ground, with stripes, checks or dot
cells 2-4 px wide, a random phase, one random tint (hue, saturation, two brightness levels) and pixel noise:

    hstripes  horizontal stripes      vstripes  vertical stripes
    checker   a checkerboard          disc      a lattice of discs (dots)

The texture survives NPID's 20%-area crops, and the tint is mostly within reach of its colour jitter
(hue +-0.4, brightness, contrast, saturation x0.6-1.4, grayscale), so instance discrimination has to
learn the textures. A network at random init sees mostly tint and brightness: its kNN accuracy on these
folders stays well below a trained encoder's (tests/trainer/test_learning.py).
"""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("hstripes", "vstripes", "checker", "disc")


def pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size x 3 uint8 image of the given texture: random period, phase, colours and noise."""
    period = int(rng.integers(2, 5))  # px per stripe, check or dot cell
    dy, dx = rng.integers(0, 2 * period, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    y, x = yy + dy, xx + dx
    if kind == "hstripes":
        mask = (y // period) % 2 == 0
    elif kind == "vstripes":
        mask = (x // period) % 2 == 0
    elif kind == "checker":
        mask = (y // period + x // period) % 2 == 0
    elif kind == "disc":
        cell = 2 * period  # one disc per cell, covering 44-75% of it: about as bright as the others
        cy, cx = y % cell - (cell - 1) / 2, x % cell - (cell - 1) / 2
        mask = cy ** 2 + cx ** 2 <= (0.8 * period) ** 2
    else:
        raise ValueError(f"unknown texture {kind!r}: one of {', '.join(CLASSES)}")
    hue, sat = rng.uniform(0, 1), rng.uniform(0, 0.6)  # texture and ground share hue and saturation
    fg = 255 * np.array(colorsys.hsv_to_rgb(hue, sat, rng.uniform(0.6, 1.0)))  # light texture ...
    bg = 255 * np.array(colorsys.hsv_to_rgb(hue, sat, rng.uniform(0.05, 0.45)))  # ... on a dark ground
    img = np.where(mask[..., None], fg, bg)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: str | Path, per_class: int = 32, size: int = 16, seed: int = 0,
                suffix: str = ".png") -> Path:
    """root/<class>/<i>.png for each class; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(c, size, rng)).save(root / c / f"{i:04d}{suffix}")
    return root


def noise_image(seed: int, height: int, width: int, fmt: str) -> bytes:
    """Encoded bytes of a random RGB image: a different picture per seed, the same bytes for the same seed."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()
