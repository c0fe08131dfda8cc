"""Generated image collections for tests: classes differ by shape, never by colour.

A network at random init mostly sees colour; NPID with colour jitter and grayscale learns the shapes,
so kNN accuracy on these folders separates a trained encoder from an untrained one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("hstripes", "vstripes", "checker", "disc")


def pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size x 3 uint8 image of the given shape, random colours, phase and noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(4, 8)
    phase = rng.integers(0, period)
    if kind == "hstripes":
        mask = ((yy + phase) // (period // 2)) % 2 == 0
    elif kind == "vstripes":
        mask = ((xx + phase) // (period // 2)) % 2 == 0
    elif kind == "checker":
        mask = (((yy + phase) // (period // 2)) + ((xx + phase) // (period // 2))) % 2 == 0
    else:
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * rng.uniform(0.2, 0.35)) ** 2
    fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = np.where(mask[..., None], fg, bg).astype(np.float64)
    img += rng.normal(0, 12, img.shape)
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
