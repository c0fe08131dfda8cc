"""Generated photo-like collections: CIFAR-10 images upscaled to random photo sizes and aspect ratios.

`make_photo_folder` writes root/<class>/<n>.jpg (some .png), each a CIFAR training image resized to a
random short side and aspect ratio; a share is stored rotated with the EXIF orientation tag that undoes
the rotation, as cameras do, so a decoder that ignores EXIF sees a sideways picture. `upright` returns the
picture a correct decoder must see. `write_bad_files` adds the files that break naive photo pipelines.
Nothing downloads: the pixels come from /work/shared/data/cifar10 (or NPID_CIFAR10_DIR).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_DIR = Path(os.environ.get("NPID_CIFAR10_DIR", "/work/shared/data/cifar10"))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# EXIF orientation -> the transpose that makes the stored pixels from the upright picture
STORED_AS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR-10 training images (uint8 n x 32 x 32 x 3) and labels, a seeded pick from the first batch."""
    batch = np.load(CIFAR_DIR / "data_batch_1.npz")
    pick = np.random.default_rng(seed).choice(len(batch["labels"]), size=n, replace=n > len(batch["labels"]))
    return batch["images"][pick], batch["labels"][pick]


def photo_size(rng: np.random.Generator, short: tuple[int, int]) -> tuple[int, int]:
    """(width, height): a short side in `short`, aspect 1:1 to 16:9 either way round."""
    side = int(rng.integers(short[0], short[1] + 1))
    long = int(side * rng.uniform(1.0, 16 / 9))
    return (long, side) if rng.random() < 0.5 else (side, long)


def make_photo_folder(root: str | Path, n: int, seed: int = 0, short: tuple[int, int] = (150, 420),
                      rotated: float = 0.2, png: float = 0.1) -> Path:
    """root/<class>/<i>.jpg|png: n upscaled CIFAR images; `rotated` share stored rotated + EXIF tag."""
    root = Path(root)
    images, labels = cifar_images(n, seed)
    rng = np.random.default_rng(seed + 1)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        img = Image.fromarray(pixels).resize(photo_size(rng, short), Image.BICUBIC)
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        if rng.random() < png:
            img.save(folder / f"{i:05d}.png")
            continue
        exif = Image.Exif()
        if rng.random() < rotated:
            orientation = int(rng.choice(list(STORED_AS)))
            img = img.transpose(STORED_AS[orientation])
            exif[0x0112] = orientation
        img.save(folder / f"{i:05d}.jpg", quality=90, exif=exif.tobytes())
    return root


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def write_bad_files(folder: str | Path, seed: int = 0, huge_px: tuple[int, int] = (8200, 6200)) -> dict[str, str]:
    """The photo-folder zoo under `folder`: {file name: "ok" (must decode) | "skip" (must be skipped)}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = cifar_images(4, seed)[0]
    photo = Image.fromarray(pixels[0]).resize((300, 200), Image.BICUBIC)
    full = jpeg_bytes(photo)
    files: dict[str, tuple[bytes, str]] = {
        "truncated.jpg": (full[: len(full) // 2], "skip"),
        "zero.jpg": (b"", "skip"),
        "text.png": (b"this is not an image, whatever its name says\n", "skip"),
        "cmyk.jpg": (jpeg_bytes(photo.convert("CMYK")), "ok"),
        "panorama.jpg": (jpeg_bytes(photo.resize((4000, 1))), "skip"),
    }
    deep = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)  # 16-bit grey
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    gif = Image.fromarray(pixels[1]).resize((160, 160))
    frames = [Image.fromarray(pixels[k]).resize((160, 160)) for k in (2, 3)]
    for name, img, kw, verdict in [("deep16.png", deep, {}, "ok"),
                                   ("palette_alpha.png", palette, {"transparency": 0}, "ok"),
                                   ("animated.gif", gif, {"save_all": True, "append_images": frames}, "ok")]:
        buf = io.BytesIO()
        img.save(buf, name.rsplit(".", 1)[1].upper().replace("JPG", "JPEG"), **kw)
        files[name] = (buf.getvalue(), verdict)
    big = Image.fromarray(pixels[2]).resize((huge_px[0] // 8, huge_px[1] // 8)).resize(huge_px)  # > 50 MP
    files["huge.jpg"] = (jpeg_bytes(big), "ok")  # JPEG: decoded in draft mode
    files["huge.png"] = (png_claiming(huge_px), "skip")  # no draft mode: over the pixel limit, skipped
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: verdict for name, (_, verdict) in files.items()}


def png_claiming(size: tuple[int, int]) -> bytes:
    """A small PNG whose header claims `size` px (a decompression bomb's shape, without the bytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", *size)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def upright(path: str | Path) -> Image.Image:
    """The picture as the camera saw it (what a decoder that honours EXIF must return), by hand."""
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        img = im.convert("RGB")
    undo = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180}
    return img.transpose(undo[orientation]) if orientation in undo else img
