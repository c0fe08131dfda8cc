"""A generated collection that is not CIFAR-10: two-colour textures, for the CPU recipe's second check.

    python bench/textures.py data/textures --per-class 250      # root/<texture>/NNNN.png, 32 x 32 px

Each image is one texture family (the label: stripes, checks, dots, rings, grid, zigzag, blobs, grain) drawn
at a random scale, angle and phase in two random colours, with sensor-like noise. Like scans of fabrics or
materials, images of one family share no pixel positions or colours, only their local structure: raw pixels
find little to compare, and an embedding must learn the structure to group a family.
"""

from __future__ import annotations

import numpy as np
from generated import main  # bench/generated.py
from PIL import Image
from scipy.ndimage import gaussian_filter

TEXTURES = ("stripes", "checks", "dots", "rings", "grid", "zigzag", "blobs", "grain")
SIZE = 32


def pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
    """SIZE x SIZE values in [0, 1]: where the second colour shows."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 9)
    u = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, period)
    v = -x * np.sin(angle) + y * np.cos(angle) + rng.uniform(0, period)
    wave = lambda t: np.sin(2 * np.pi * t / period)  # noqa: E731
    if kind == "stripes":
        return (wave(u) > 0).astype(float)
    if kind == "checks":
        return (wave(u) * wave(v) > 0).astype(float)
    if kind == "dots":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (np.hypot(du, dv) < rng.uniform(0.2, 0.35) * period).astype(float)
    if kind == "rings":
        cx, cy = rng.uniform(-SIZE / 2, 1.5 * SIZE, 2)
        return (wave(np.hypot(x - cx, y - cy)) > 0).astype(float)
    if kind == "grid":
        width = rng.uniform(1.0, 1.8)
        return (((u % period) < width) | ((v % period) < width)).astype(float)
    if kind == "zigzag":
        tooth = rng.uniform(3, 6)
        triangle = np.abs((u / tooth) % 2 - 1) * tooth
        return (wave(v + triangle) > 0).astype(float)
    if kind == "blobs":
        field = gaussian_filter(rng.normal(size=(SIZE, SIZE)), rng.uniform(1.5, 3.0), mode="wrap")
        return (field > np.median(field)).astype(float)
    if kind == "grain":
        field = gaussian_filter(rng.normal(size=(SIZE, SIZE)), rng.uniform(0.4, 0.8), mode="wrap")
        return (field > np.median(field)).astype(float)
    raise ValueError(f"unknown texture {kind!r}")


def image(kind: str, rng: np.random.Generator) -> Image.Image:
    first, second = rng.integers(0, 256, (2, 3)).astype(np.float64)
    m = gaussian_filter(pattern(kind, rng), 0.5)[..., None]  # a little optical blur
    pixels = first * (1 - m) + second * m + rng.normal(0, 6, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


if __name__ == "__main__":
    main(__doc__, TEXTURES, image, per_class=250)
