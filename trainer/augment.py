"""The paper's augmentation, as a PIL pipeline and as a few batched tensor ops on the device.

Paper / lemniscate.pytorch: RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.4),
RandomGrayscale(0.2), horizontal flip (off in the reference's CIFAR code), ToTensor, Normalize. The
strengths live in one frozen `config.AugmentConfig` whose defaults are those values.

`DeviceAugment` is the interface the device-side feeds use:

    aug = DeviceAugment(pre, AugmentConfig(hflip=...))
    g = torch.Generator(device=images.device).manual_seed(seed)      # one generator per global batch
    params = aug.sample(b, height, width, g)   # per-sample random parameters, drawn on g's device
    x = aug.apply(images, params)              # images: b x H x W x 3 uint8 on the device
                                               # -> x: b x 3 x S x S float32, normalised (pre.mean, pre.std)

where S = `pre.image_size`, the output size, and H x W is the stored size, which may be larger than S
(a decode-once cache storing photos at, say, 110 px for a 96 px input: the crop box is drawn on the
stored image and resized to S, exactly RandomResizedCrop on the stored image), or equal (CIFAR: 32 -> 32).
`sample` and `apply` are separate so a data-parallel run draws the parameters of the whole global batch
once and every rank applies its slice (`params.select(slice)`), and so `apply` is a pure function.

No step reads a value back to the host: no `nonzero`, no boolean-mask indexing, no `.item()`; every
shape is a function of (b, H, W, S) alone, so the ops queue asynchronously (and a CUDA graph or
torch.compile could capture them). Per-sample choices are `torch.where` selections and one batched
`grid_sample`; each sample's random order of the four jitter ops is applied as three "before hue"
blend slots, one hue shift for everyone, and three "after hue" slots, a slot being the identity for the
samples it does not concern. About 210 aten ops (views aside) per batch whatever its size
(tests/trainer/test_augment.py).

The deterministic eval transform on the device is `Preprocess.device_eval` (trainer/preprocess.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from .config import AugmentConfig
from .preprocess import Preprocess


def train_transform(pre: Preprocess, cfg: AugmentConfig) -> T.Compose:
    """The paper's PIL pipeline (the loader path for large images)."""
    ops = [T.RandomResizedCrop(pre.image_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
           T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
           T.RandomGrayscale(cfg.grayscale_p)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


# ---------------------------------------------------------------------------------------------
# Device-side batched augmentation
# ---------------------------------------------------------------------------------------------

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # jitter op ids, ColorJitter's order


def sample_crop_boxes(b: int, height: int, width: int, g: torch.Generator,
                      cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for b samples at once, on g's device.

    -> boxes: b x 4 (top, left, h, w) in whole pixels. Ten attempts per sample as in torchvision (the
    first valid one wins); a sample with none takes the centre crop with the ratio clamped into range.
    """
    dev = g.device
    area = height * width
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    scale = torch.empty(b, CROP_ATTEMPTS, device=dev).uniform_(*cfg.crop_scale, generator=g)  # b x 10
    ratio = torch.empty(b, CROP_ATTEMPTS, device=dev).uniform_(log_lo, log_hi, generator=g).exp_()
    w = torch.round(torch.sqrt(area * scale * ratio))  # b x 10
    h = torch.round(torch.sqrt(area * scale / ratio))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # b x 10
    first = ok.float().argmax(1, keepdim=True)  # b x 1, the first valid attempt (0 when there is none)
    found = ok.any(1)  # b
    # the fallback: the whole image, its ratio clamped into range (torchvision's centre-crop branch)
    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        fw, fh = width, int(round(width / cfg.crop_ratio[0]))
    elif in_ratio > cfg.crop_ratio[1]:
        fh, fw = height, int(round(height * cfg.crop_ratio[1]))
    else:
        fw, fh = width, height
    hh = torch.where(found, h.gather(1, first).squeeze(1), float(fh))  # b
    ww = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    top = torch.floor(torch.rand(b, device=dev, generator=g) * (height - hh + 1))
    left = torch.floor(torch.rand(b, device=dev, generator=g) * (width - ww + 1))
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack([top, left, hh, ww], 1)  # b x 4


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear crop-and-resize of each image to size x size by one batched grid_sample (flip optional).

    x: BxCxHxW float, boxes: Bx4 (top, left, h, w) in pixels, flip: B bool -> BxCxSxS.
    """
    b, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)  # B each
    # pixel centres of the output grid inside the crop
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # S
    xs = torch.addcmul(left[:, None], steps[None], w[:, None])  # B x S (pixels)
    ys = torch.addcmul(top[:, None], steps[None], h[:, None])
    if flip is not None:  # mirror inside the crop: x -> 2 left + w - x
        xs = torch.where(flip[:, None], (2 * left + w)[:, None] - xs, xs)
    # stay on the crop's pixel centres, as torchvision's resized_crop (and PIL) do when upsampling:
    # an edge sample must not blend in the pixel outside the crop
    xs = torch.clamp(xs, (left + 0.5)[:, None], (left + w - 0.5)[:, None])
    ys = torch.clamp(ys, (top + 0.5)[:, None], (top + h - 0.5)[:, None])
    gx = xs * (2 / width) - 1  # B x S, normalised [-1, 1] (align_corners=False)
    gy = ys * (2 / height) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)  # B x S x S x 2
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma as in PIL's convert('L'): Bx3xHxW -> Bx1xHxW."""
    return (x[:, 0:1] * 0.299).add_(x[:, 1:2], alpha=0.587).add_(x[:, 2:3], alpha=0.114)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bx3xHxW in [0, 1] -> (h, s, v), each BxHxW, h in [0, 1) (torchvision's _rgb2hsv)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), 0.0)
    d = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(h, s, v) each BxHxW -> Bx3xHxW: channel n in (5, 3, 1) for (r, g, b) is
    v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, the sector table in closed form."""
    n = torch.arange(5, 0, -2, device=h.device, dtype=h.dtype).view(1, 3, 1, 1)  # 1 x 3 x 1 x 1
    k = torch.remainder(n + 6 * h[:, None], 6)  # B x 3 x H x W
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return v[:, None] - (v * s)[:, None] * ramp


def _blend(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: (f x + (1 - f) ref) clamped to [0, 1]; f: B. f = 1 returns x exactly."""
    fb = f[:, None, None, None]  # B x 1 x 1 x 1
    return torch.addcmul((1 - fb) * ref, fb, x).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:  # x: Bx3xHxW in [0, 1], f: B
    return _blend(x, torch.zeros((), device=x.device), f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f)  # the image's mean luma


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by shift (B, in turns) in HSV space, as torchvision's adjust_hue."""
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + shift[:, None, None], 1.0), s, v)


def blend_slot(x: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """One jitter slot for the whole batch: per sample, brightness, contrast or saturation.

    x: Bx3xHxW; saturation, contrast: B, 1.0 where the sample's op in this slot is that one, else 0.0
    (neither: brightness); f: B factors, 1 for the samples this slot leaves alone -> Bx3xHxW.
    """
    gray = _gray(x)  # B x 1 x H x W
    mean = gray.mean((2, 3), keepdim=True)  # B x 1 x 1 x 1
    w_sat, w_con = saturation[:, None, None, None], contrast[:, None, None, None]
    ref = torch.addcmul(w_con * mean, w_sat, gray)  # B x 1 x H x W: the gray image, its mean, or 0
    return _blend(x, ref, f)


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch, on the device they were drawn on."""

    boxes: torch.Tensor  # B x 4 (top, left, h, w) in stored pixels
    flip: torch.Tensor  # B bool
    jitter: torch.Tensor  # B x 4 factors: brightness, contrast, saturation (around 1), hue shift (around 0)
    order: torch.Tensor  # B x 4, each row a permutation of the four jitter op ids
    gray: torch.Tensor  # B bool

    def select(self, rows: slice) -> AugmentParams:
        """The parameters of a contiguous slice of the batch (one rank's share of a global batch)."""
        return AugmentParams(self.boxes[rows], self.flip[rows], self.jitter[rows], self.order[rows],
                             self.gray[rows])


class DeviceAugment:
    """The paper's augmentation for a uint8 batch on any device: BxHxWx3 uint8 -> Bx3xSxS normalised.

    See the module docstring for the interface; H x W (stored) may exceed S = pre.image_size (output).
    """

    def __init__(self, pre: Preprocess, cfg: AugmentConfig):
        self.pre = pre
        self.cfg = cfg
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def sample(self, b: int, height: int, width: int, g: torch.Generator) -> AugmentParams:
        """Draw a batch's parameters on g's device (one generator per batch keeps a run replayable)."""
        cfg, dev = self.cfg, g.device
        boxes = sample_crop_boxes(b, height, width, g, cfg)  # b x 4
        flip = torch.rand(b, device=dev, generator=g) < (0.5 if cfg.hflip else 0.0)  # b
        jitter = torch.stack([
            torch.empty(b, device=dev).uniform_(*cfg.factor_range("brightness"), generator=g),
            torch.empty(b, device=dev).uniform_(*cfg.factor_range("contrast"), generator=g),
            torch.empty(b, device=dev).uniform_(*cfg.factor_range("saturation"), generator=g),
            torch.empty(b, device=dev).uniform_(-cfg.hue, cfg.hue, generator=g),
        ], 1)  # b x 4
        order = torch.argsort(torch.rand(b, 4, device=dev, generator=g), 1)  # b x 4
        gray = torch.rand(b, device=dev, generator=g) < cfg.grayscale_p  # b
        return AugmentParams(boxes, flip, jitter, order, gray)

    def apply(self, images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """images: BxHxWx3 uint8, p: its parameters (same device) -> Bx3xSxS float32, normalised."""
        x = images.permute(0, 3, 1, 2).float().div_(255)  # B x 3 x H x W in [0, 1]
        x = crop_resize(x, p.boxes, self.pre.image_size, p.flip if self.cfg.hflip else None).clamp_(0, 1)
        x = self.colour_jitter(x, p.jitter, p.order)
        x = torch.where(p.gray[:, None, None, None], _gray(x), x)  # B x 3 x S x S
        mean, std = self._normaliser(x.device)
        return x.sub_(mean).div_(std)

    @staticmethod
    def colour_jitter(x: torch.Tensor, jitter: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """ColorJitter with each sample's own op order: x Bx3xSxS, jitter Bx4, order Bx4 -> Bx3xSxS.

        Hue sits at slot k of a sample's order: the blend ops of slots s < k run before the one hue shift
        and those of slots s > k after it, each slot an identity (factor 1) for the samples it skips.
        """
        hue_slot = (order == HUE).float().argmax(1)  # B
        factor = jitter.gather(1, order)  # B x 4, the factor of the op in each slot
        saturation, contrast = (order == SATURATION).float(), (order == CONTRAST).float()  # B x 4
        for s in range(3):  # slots before hue
            f = torch.where(hue_slot > s, factor[:, s], 1.0)
            x = blend_slot(x, saturation[:, s], contrast[:, s], f)
        x = adjust_hue(x, jitter[:, HUE])
        for s in range(1, 4):  # slots after hue
            f = torch.where(hue_slot < s, factor[:, s], 1.0)
            x = blend_slot(x, saturation[:, s], contrast[:, s], f)
        return x

    def _normaliser(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as 1x3x1x1 tensors on `device`, made once per device (no copy per batch)."""
        if device not in self._norm:
            self._norm[device] = (torch.tensor(self.pre.mean, device=device).view(1, 3, 1, 1),
                                  torch.tensor(self.pre.std, device=device).view(1, 3, 1, 1))
        return self._norm[device]

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, height, width, _ = images.shape
        return self.apply(images, self.sample(b, height, width, g))


