"""A generated collection that is not CIFAR-10: shapes on cluttered grounds, for the CPU recipe's second check.

    python bench/shapes.py data/shapes --per-class 400      # root/<shape>/NNNN.png, 32 x 32 px

Each image is one filled shape (the label: circle, square, triangle, cross, ring, bar) at a random place,
size and rotation, in a random colour, on a ground of random colour with a few random lines of clutter.
Colour and position vary freely within each class, so raw pixels group images by colour and place, not by
shape: the kNN bar a learned embedding must pass is low for pixels only if shape is what it learns.
"""

from __future__ import annotations

import math

import numpy as np
from generated import main  # bench/generated.py
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
SIZE = 32


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def polygon(cx: float, cy: float, r: float, corners: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners))
            for i in range(corners)]


def draw_shape(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif kind == "square":
        d.polygon(polygon(cx, cy, r * 1.2, 4, angle), fill=fill)
    elif kind == "triangle":
        d.polygon(polygon(cx, cy, r * 1.3, 3, angle), fill=fill)
    elif kind == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=max(2, int(r / 2.5)))
    elif kind == "bar":
        dx, dy = 1.3 * r * math.cos(angle), 1.3 * r * math.sin(angle)
        d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=max(2, int(r / 2)))
    else:
        raise ValueError(f"unknown shape {kind!r}")


def image(kind: str, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), colour(rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):  # clutter: thin lines across the ground
        d.line([tuple(rng.uniform(0, SIZE, 2)), tuple(rng.uniform(0, SIZE, 2))], fill=colour(rng), width=1)
    r = rng.uniform(6, 11)
    cx, cy = rng.uniform(r, SIZE - r, 2)
    draw_shape(d, kind, cx, cy, r, rng.uniform(0, 2 * math.pi), colour(rng))
    noise = rng.normal(0, 6, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


if __name__ == "__main__":
    main(__doc__, SHAPES, image, per_class=400)
