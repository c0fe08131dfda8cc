"""Writing a generated, labelled collection (root/<class>/NNNN.png) from a per-image drawing function."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Draw = Callable[[str, np.random.Generator], Image.Image]  # (class name, rng) -> one image


def make(root: Path, classes: Sequence[str], draw: Draw, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, rng).save(root / kind / f"{i:04d}.png")
    return root


def main(description: str, classes: Sequence[str], draw: Draw, per_class: int) -> None:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=per_class)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make(args.out, classes, draw, args.per_class, args.seed))
