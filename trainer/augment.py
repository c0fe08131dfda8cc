"""Augmentations of the paper's code, as a PIL pipeline and as batched tensor ops on the device.

Paper / lemniscate.pytorch: RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.4),
RandomGrayscale(0.2), horizontal flip (off in the CIFAR recipe), ToTensor, Normalize.
`DeviceAugment` draws the same per-sample parameters as torchvision and applies them to a whole
uint8 batch held in device memory, so the GPU never waits on per-image PIL work.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import transforms as T

CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast, saturation: factor in [0.6, 1.4]; hue: shift in [-0.4, 0.4]
GRAYSCALE_P = 0.2


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the encoder's input at eval time; saved with every export and artifact."""

    image_size: int  # px, square input
    resize: int  # shorter side before the centre crop (== image_size for small images: no crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_size(cls, image_size: int, mean, std) -> Preprocess:
        small = image_size <= 64
        resize = image_size if small else int(round(image_size / 0.875))
        return cls(image_size, resize, tuple(mean), tuple(std))

    def eval_transform(self) -> T.Compose:
        if self.resize == self.image_size:  # small images: squash to the square, as training saw them
            geometry = [T.Resize((self.image_size, self.image_size), antialias=True)]
        else:
            geometry = [T.Resize(self.resize, antialias=True), T.CenterCrop(self.image_size)]
        return T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        d = json.loads(Path(path).read_text())
        return cls(int(d["image_size"]), int(d["resize"]), tuple(d["mean"]), tuple(d["std"]))


def train_transform(pre: Preprocess, hflip: bool) -> T.Compose:
    """The paper's PIL pipeline."""
    ops = [T.RandomResizedCrop(pre.image_size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)]
    ops += [T.ColorJitter(JITTER, JITTER, JITTER, JITTER), T.RandomGrayscale(GRAYSCALE_P)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


# ---------------------------------------------------------------------------------------------
# Device-side batched augmentation
# ---------------------------------------------------------------------------------------------


def sample_crop_boxes(b: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for b samples at once -> boxes [b, 4] (top, left, h, w).

    Ten attempts per sample as in torchvision; samples with no valid attempt fall back to the
    centre crop with the ratio clamped into range.
    """
    area = height * width
    attempts = 10
    scale = torch.empty(b, attempts).uniform_(*CROP_SCALE, generator=g)  # b x 10
    log_r = torch.empty(b, attempts).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=g)
    ratio = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * scale * ratio))
    h = torch.round(torch.sqrt(area * scale / ratio))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # b x 10
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    rows = torch.arange(b)
    hh = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.zeros(b))
    ww = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.zeros(b))
    # fallback: whole image, ratio clamped (torchvision's centre-crop branch)
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, int(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        fh, fw = height, int(round(height * CROP_RATIO[1]))
    else:
        fw, fh = width, height
    bad = first < 0
    hh[bad], ww[bad] = float(fh), float(fw)
    top = torch.floor(torch.rand(b, generator=g) * (height - hh + 1))
    left = torch.floor(torch.rand(b, generator=g) * (width - ww + 1))
    top[bad] = float((height - fh) // 2)
    left[bad] = float((width - fw) // 2)
    return torch.stack([top, left, hh, ww], 1)  # b x 4


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None):
    """Bilinear crop-and-resize of each image to size x size by one batched grid_sample.

    x: BxCxHxW float, boxes: Bx4 (top, left, h, w) in pixels -> BxCxSxS.
    """
    b, _, height, width = x.shape
    top, left, h, w = boxes.to(x.device, x.dtype).unbind(1)
    # pixel centres of the output grid inside the crop, in normalised [-1, 1] coordinates
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # S
    xs = left[:, None] + steps[None] * w[:, None]  # B x S (pixels)
    ys = top[:, None] + steps[None] * h[:, None]
    if flip is not None:
        xs = torch.where(flip.to(x.device)[:, None], (left + w)[:, None] - (xs - left[:, None]), xs)
    # stay on the crop's pixel centres, as torchvision's resized_crop (and PIL) do when upsampling:
    # an edge sample must not blend in the pixel outside the crop
    xs = torch.minimum(torch.maximum(xs, (left + 0.5)[:, None]), (left + w - 0.5)[:, None])
    ys = torch.minimum(torch.maximum(ys, (top + 0.5)[:, None]), (top + h - 0.5)[:, None])
    gx = xs / width * 2 - 1
    gy = ys / height * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)  # B x S x S x 2
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma as in PIL's convert('L'): Bx3xHxW -> Bx1xHxW."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([
        torch.stack([v, q, p, p, t, v], 1),
        torch.stack([t, v, v, q, p, p], 1),
        torch.stack([p, p, t, v, v, q], 1),
    ], 1)  # B x 3 x 6 x H x W
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def adjust_brightness(x, f):  # x: Bx3xHxW in [0,1], f: B
    return (x * f[:, None, None, None]).clamp(0, 1)


def adjust_contrast(x, f):
    mean = _gray(x).mean((1, 2, 3), keepdim=True)  # B x 1 x 1 x 1
    fb = f[:, None, None, None]
    return (fb * x + (1 - fb) * mean).clamp(0, 1)


def adjust_saturation(x, f):
    fb = f[:, None, None, None]
    return (fb * x + (1 - fb) * _gray(x)).clamp(0, 1)


def adjust_hue(x, f):
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + f[:, None, None]) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return _hsv_to_rgb(hsv)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (all on the CPU, drawn from one generator)."""

    boxes: torch.Tensor  # B x 4 (top, left, h, w)
    flip: torch.Tensor  # B bool
    jitter: torch.Tensor  # B x 4 factors: brightness, contrast, saturation (around 1), hue (around 0)
    order: torch.Tensor  # B x 4, a permutation of the four jitter ops per sample
    gray: torch.Tensor  # B bool

    def select(self, rows: torch.Tensor) -> AugmentParams:
        """The parameters of a subset of the batch (one rank's slice of a global batch)."""
        return AugmentParams(self.boxes[rows], self.flip[rows], self.jitter[rows], self.order[rows],
                             self.gray[rows])


class DeviceAugment:
    """The paper's augmentation for a uint8 batch on any device: BxHxWx3 uint8 -> Bx3xSxS normalised."""

    def __init__(self, pre: Preprocess, hflip: bool):
        self.pre = pre
        self.hflip = hflip

    def sample(self, b: int, height: int, width: int, g: torch.Generator) -> AugmentParams:
        boxes = sample_crop_boxes(b, height, width, g)
        flip = (torch.rand(b, generator=g) < 0.5) & self.hflip
        lo, hi = 1 - JITTER, 1 + JITTER
        jitter = torch.stack([
            torch.empty(b).uniform_(lo, hi, generator=g),
            torch.empty(b).uniform_(lo, hi, generator=g),
            torch.empty(b).uniform_(lo, hi, generator=g),
            torch.empty(b).uniform_(-JITTER, JITTER, generator=g),
        ], 1)
        order = torch.argsort(torch.rand(b, 4, generator=g), 1)
        gray = torch.rand(b, generator=g) < GRAYSCALE_P
        return AugmentParams(boxes, flip, jitter, order, gray)

    def apply(self, images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        dev = images.device
        x = images.permute(0, 3, 1, 2).float().div_(255)  # B x 3 x H x W in [0, 1]
        x = crop_resize(x, p.boxes, self.pre.image_size, p.flip if self.hflip else None).clamp_(0, 1)
        jitter, order = p.jitter.to(dev), p.order.to(dev)
        for slot in range(4):  # each sample applies its own permutation of the four ops
            for op_id, op in enumerate(JITTER_OPS):
                sel = (order[:, slot] == op_id).nonzero().squeeze(1)
                if sel.numel():
                    x[sel] = op(x[sel], jitter[sel, op_id])
        gray = p.gray.to(dev)[:, None, None, None]
        x = torch.where(gray, _gray(x).expand_as(x), x)
        mean = torch.tensor(self.pre.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std, device=dev).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, height, width, _ = images.shape
        return self.apply(images, self.sample(b, height, width, g))


def device_eval(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Eval transform for a uint8 batch already at image_size: BxSxSx3 uint8 -> Bx3xSxS normalised."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != pre.image_size or x.shape[-2] != pre.image_size:
        x = F.interpolate(x, size=(pre.image_size, pre.image_size), mode="bilinear", antialias=True)
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
