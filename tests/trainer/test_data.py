"""Image folders: stable ids and labels, decoding any file to RGB, skipping bad files; CIFAR-10 arrays."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import ImageFolder, load_cifar10, load_rgb, scan_folder

CIFAR_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def solid(size=(8, 6), colour=RED, mode="RGB"):
    return Image.new(mode, size, colour)


def write(path: Path, img: Image.Image | None = None, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (img or solid()).save(path, **save_kwargs)
    return path


# --- scan_folder ---------------------------------------------------------------------------------


def test_scan_folder_sorted_ids_and_labels(tmp_path):
    for rel in ("b/x.png", "a/y.png", "a/sub/z.jpg", "b/W.JPG", "c/0.webp"):
        write(tmp_path / rel)
    write(tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "d").mkdir()  # an empty folder is no class
    coll = scan_folder(tmp_path)
    assert coll.paths == ["a/sub/z.jpg", "a/y.png", "b/W.JPG", "b/x.png", "c/0.webp"]
    assert coll.classes == ["a", "b", "c"]
    assert coll.labels.tolist() == [0, 0, 1, 1, 2]
    assert coll.labels.dtype == np.int64
    assert scan_folder(tmp_path).paths == coll.paths  # stable


def test_scan_folder_ids_do_not_depend_on_creation_order(tmp_path):
    names = ["k/3.png", "a/1.png", "k/0.png", "b/2.png"]
    for order, root in ((names, tmp_path / "one"), (names[::-1], tmp_path / "two")):
        for rel in order:
            write(root / rel)
    one, two = scan_folder(tmp_path / "one"), scan_folder(tmp_path / "two")
    assert one.paths == two.paths == ["a/1.png", "b/2.png", "k/0.png", "k/3.png"]
    assert one.labels.tolist() == two.labels.tolist() == [0, 1, 2, 2]


def test_scan_folder_no_labels_when_files_at_root(tmp_path):
    write(tmp_path / "top.png")
    write(tmp_path / "cls" / "x.png")
    coll = scan_folder(tmp_path)
    assert coll.paths == ["cls/x.png", "top.png"]
    assert coll.labels is None and coll.classes == []


def test_scan_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        scan_folder(tmp_path / "empty")


# --- load_rgb ------------------------------------------------------------------------------------


def test_exif_orientation_applied(tmp_path):
    """Stored 40x20, top half red, bottom half blue; Orientation=6 means 'rotate 90 degrees clockwise'."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:10] = RED
    arr[10:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "rot.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20) and raw.getexif()[0x0112] == 6
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 40)
    out = np.asarray(img).astype(int)
    # clockwise: the stored top row becomes the right column
    assert np.abs(out[:, 15:] - RED).max() < 40
    assert np.abs(out[:, :5] - BLUE).max() < 40


def rgba_image():
    arr = np.zeros((6, 8, 4), np.uint8)
    arr[..., :3] = (10, 200, 30)
    arr[:, :4, 3] = 255  # left half opaque, right half transparent
    return Image.fromarray(arr, "RGBA")


@pytest.mark.parametrize("name,make,expected", [
    ("palette.png", lambda: solid(colour=(10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE),
     {(0, 0): (10, 200, 30)}),
    ("rgba.png", rgba_image, {(0, 0): (10, 200, 30), (7, 0): (255, 255, 255)}),
    ("la.png", lambda: rgba_image().convert("LA"), {(7, 0): (255, 255, 255)}),
    ("palette_alpha.png", lambda: rgba_image().convert("P"), {(0, 0): (10, 200, 30)}),
    ("gray.png", lambda: solid(colour=77, mode="L"), {(3, 3): (77, 77, 77)}),
    ("bits.png", lambda: solid(colour=1, mode="1"), {(3, 3): (255, 255, 255)}),
    ("cmyk.jpg", lambda: solid(colour=(0, 255, 255, 0), mode="CMYK"), {(3, 3): (255, 0, 0)}),
    ("plain.bmp", lambda: solid(colour=BLUE), {(3, 3): BLUE}),
    ("plain.tiff", lambda: solid(colour=GREEN), {(3, 3): GREEN}),
    ("plain.webp", lambda: solid(colour=GREEN), {(3, 3): GREEN}),
])
def test_any_mode_becomes_rgb(tmp_path, name, make, expected):
    src = make()
    path = write(tmp_path / name, src, **({"lossless": True} if name.endswith(".webp") else {}))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == src.size
    for xy, colour in expected.items():
        tol = 12 if name.endswith(".jpg") else 1
        assert np.abs(np.array(img.getpixel(xy)) - colour).max() <= tol, (name, xy, img.getpixel(xy))


def test_sixteen_bit_png(tmp_path):
    arr = np.zeros((4, 5), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 32768, 257
    path = write(tmp_path / "deep.png", Image.fromarray(arr))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (5, 4)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (128, 128, 128)  # not clipped to white as a plain convert would do
    assert img.getpixel((2, 0)) == (1, 1, 1)
    assert img.getpixel((3, 3)) == (0, 0, 0)


def test_gif_first_frame(tmp_path):
    frames = [solid(colour=RED), solid(colour=GREEN), solid(colour=BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 6)
    assert img.getpixel((2, 2)) == RED


def test_load_rgb_from_bytes_and_bad_data():
    buf = io.BytesIO()
    solid(colour=BLUE).save(buf, format="PNG")
    assert load_rgb(io.BytesIO(buf.getvalue())).getpixel((0, 0)) == BLUE
    with pytest.raises(OSError):
        load_rgb(io.BytesIO(b"definitely not an image"))


# --- ImageFolder.validate ------------------------------------------------------------------------


def test_validate_skips_bad_files_and_keeps_ids_dense(tmp_path, caplog):
    rng = np.random.default_rng(0)
    good = {}
    for rel, colour in (("a/0.png", RED), ("a/2.jpg", GREEN), ("b/1.png", BLUE), ("b/3.png", (9, 9, 9))):
        write(tmp_path / rel, solid(colour=colour))
        good[rel] = colour
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG")
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    png = buf.getvalue()
    (tmp_path / "a" / "1_corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (tmp_path / "a" / "3_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "b" / "0_truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "b" / "2_empty.png").write_bytes(b"")

    ds = ImageFolder(tmp_path)
    assert len(ds) == 8
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        skipped = ds.validate()
    bad = {"a/1_corrupt.jpg", "a/3_truncated.jpg", "b/0_truncated.png", "b/2_empty.png"}
    assert {path for path, _ in skipped} == bad
    assert ds.skipped == skipped
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 4
    assert len(ds) == 4
    assert ds.collection.paths == sorted(good)
    assert ds.collection.labels.tolist() == [0, 0, 1, 1]
    assert ds.collection.classes == ["a", "b"]
    for i, rel in enumerate(ds.collection.paths):  # ids 0..n-1, each decodes to its own file
        img, idx = ds[i]
        assert idx == i
        assert np.abs(np.array(img.getpixel((1, 1))) - good[rel]).max() <= 8


def test_validate_clean_folder_changes_nothing(tmp_path):
    for rel in ("x/0.png", "y/0.png"):
        write(tmp_path / rel)
    ds = ImageFolder(tmp_path)
    assert ds.validate() == [] and len(ds) == 2 and ds.skipped == []


# --- CIFAR-10 arrays -----------------------------------------------------------------------------


@pytest.mark.skipif(not CIFAR_DIR.is_dir(), reason=f"CIFAR-10 arrays not found at {CIFAR_DIR}")
def test_load_cifar10():
    test = load_cifar10(CIFAR_DIR, "test")
    assert test.images.shape == (1000, 32, 32, 3) and test.images.dtype == np.uint8
    assert test.collection.labels.shape == (1000,)
    assert set(test.collection.labels.tolist()) == set(range(10))
    train = load_cifar10(CIFAR_DIR, "train")
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    labels = train.collection.labels
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [5000] * 10
    assert len(train) == 50_000 and len(set(train.collection.paths)) == 50_000
    assert train.collection.classes[0] == "airplane" and train.collection.classes[9] == "truck"
    mean = train.images[:5000].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.02)
    img, i = train[3]
    assert i == 3 and img.size == (32, 32) and np.array_equal(np.asarray(img), train.images[3])


def test_load_cifar10_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path)
