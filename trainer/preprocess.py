"""The eval transform: how an image becomes the encoder's input, recorded with every export and version.

Two geometries, chosen by `is_small`:
- small images (CIFAR-like): squash the whole image to image_size x image_size, as training saw it;
- photos: resize the short side to `resize` (image_size / 0.875, the ImageNet convention), centre crop.

`fit` is the geometric part as a PIL function that stops at a square of `stored_size` px; the image cache
stores exactly that square (uint8). `device_eval` finishes the transform on a batch of those squares
(centre crop + normalise) and equals the PIL `eval_transform` of the same decoded image to the last bit,
so a collection embedded from the cache and a query embedded through PIL see the same pixels.

Format 1 (no "format" key): the same fields and meaning; format 2 adds the key itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

# Images up to this many px (short side) are "small": the CIFAR geometry and recipe of the paper's code apply
# (squashed whole, 3x3 stride-1 stem without max-pool, no flip, weight decay 5e-4); above it the ImageNet ones.
# 64 px: the ImageNet stem divides by 4, leaving <= 16x16 maps at 64 px, too coarse for ResNet's 4 stages.
SMALL_IMAGE_MAX = 64
# ImageNet eval convention: resize the short side to size / 0.875 (256 for 224), then centre crop.
PHOTO_CROP_FRACTION = 0.875


def is_small(image_size: int) -> bool:
    """CIFAR-style inputs (the CIFAR geometry and stem, no flip, weight decay 5e-4 by default)."""
    return image_size <= SMALL_IMAGE_MAX

PREPROCESS_FORMAT = 2


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preprocessing; saved as preprocess.json with every export and artifact."""

    image_size: int  # px, square encoder input
    resize: int  # short side before the centre crop (== image_size for small images: squash, no crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    format: int = PREPROCESS_FORMAT

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.resize < self.image_size:
            raise ValueError(f"need 1 <= image_size <= resize (got {self.image_size}, {self.resize})")

    @classmethod
    def for_size(cls, image_size: int, mean, std) -> Preprocess:
        resize = image_size if is_small(image_size) else int(round(image_size / PHOTO_CROP_FRACTION))
        return cls(image_size, resize, tuple(mean), tuple(std))

    @property
    def squash(self) -> bool:
        return self.resize == self.image_size

    @property
    def stored_size(self) -> int:
        """Side of the square `fit` returns: what the cache stores and training crops from."""
        return self.resize

    def eval_transform(self) -> T.Compose:
        if self.squash:
            geometry = [T.Resize((self.image_size, self.image_size), antialias=True)]
        else:
            geometry = [T.Resize(self.resize, antialias=True), T.CenterCrop(self.image_size)]
        return T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def fit(self, img: Image.Image) -> Image.Image:
        """RGB image -> stored_size x stored_size RGB: the eval geometry up to (not including) the final crop.

        The square is cut so that its own centre crop lands on the pixels the one-step centre crop of
        `eval_transform` takes (both round the offsets the same way).
        """
        if self.squash:
            return TF.resize(img, [self.image_size, self.image_size], antialias=True)
        img = TF.resize(img, self.resize, antialias=True)  # short side -> resize, as T.Resize(int)
        width, height = img.size
        inner = inner_offset(self.resize, self.image_size)
        left = min(max(inner_offset(width, self.image_size) - inner, 0), width - self.resize)
        top = min(max(inner_offset(height, self.image_size) - inner, 0), height - self.resize)
        return img.crop((left, top, left + self.resize, top + self.resize))

    def device_eval(self, squares: torch.Tensor) -> torch.Tensor:
        """Bx S x S x3 uint8 squares from `fit` (S = stored_size), any device -> Bx3xCxC normalised (C = image_size)."""
        b, height, width, _ = squares.shape
        if height != self.stored_size or width != self.stored_size:
            raise ValueError(f"device_eval needs {self.stored_size} px squares (got {height}x{width})")
        o = inner_offset(self.stored_size, self.image_size)
        crop = squares[:, o:o + self.image_size, o:o + self.image_size]  # B x C x C x 3
        x = crop.permute(0, 3, 1, 2).float().div_(255)  # B x 3 x C x C in [0, 1]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        d = json.loads(Path(path).read_text())
        fmt = int(d.get("format", 1))
        if fmt > PREPROCESS_FORMAT:
            raise ValueError(f"{path}: preprocess format {fmt} is newer than this code ({PREPROCESS_FORMAT})")
        return cls(int(d["image_size"]), int(d["resize"]), tuple(d["mean"]), tuple(d["std"]), fmt)


def inner_offset(length: int, crop: int) -> int:
    """torchvision's CenterCrop offset of a `crop` window in `length` pixels."""
    return int(round((length - crop) / 2.0))
