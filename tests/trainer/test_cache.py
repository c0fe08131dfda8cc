"""The decode-once image cache: exact squares, reuse while files are unchanged, bad files skipped and counted."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import photos
import pytest
from PIL import Image

from trainer import cache as C
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from trainer.preprocess import Preprocess

PRE = Preprocess.for_size(96, IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = photos.make_photo_folder(tmp_path_factory.mktemp("photos") / "images", 30, seed=11, rotated=0.4)
    verdicts = photos.write_bad_files(root / "odd", seed=12)
    return root, verdicts


@pytest.fixture
def folder(template, tmp_path):
    root, verdicts = template
    return shutil.copytree(root, tmp_path / "images"), verdicts


def test_cached_rows_are_the_fitted_upright_images(folder, tmp_path):
    root, _ = folder
    ds = C.cached_folder(root, PRE, tmp_path / "cache", threads=3)
    good = [p for p in ds.collection.paths if not p.startswith("odd/")]
    assert len(good) == 30
    rotated = 0
    for p in good:
        row = ds.collection.paths.index(p)
        expected = np.asarray(PRE.fit(photos.upright(root / p)))  # EXIF undone by hand
        assert np.array_equal(ds.images[row], expected), p
        with Image.open(root / p) as im:
            rotated += im.getexif().get(0x0112, 1) != 1
    assert rotated >= 5  # the check covered EXIF-rotated files
    assert ds.images.dtype == np.uint8 and isinstance(ds.images, np.memmap)


def test_second_build_reuses_everything_and_changes_decode_only_what_changed(folder, tmp_path):
    root, verdicts = folder
    first = C.cached_folder(root, PRE, tmp_path / "cache", threads=2)
    n_bad = sum(v == "skip" for v in verdicts.values())
    assert (first.report.decoded, first.report.reused, len(first.skipped)) == (len(first) + n_bad, 0, n_bad)
    again = C.cached_folder(root, PRE, tmp_path / "cache", threads=2)
    assert (again.report.decoded, again.report.reused) == (0, len(first))
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))

    changed = sorted(root.glob("*/*.jpg"))[0]
    Image.new("RGB", (200, 150), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse clocks
    removed = sorted(root.glob("*/*.jpg"))[-1]
    removed.unlink()
    Image.new("RGB", (300, 160), (0, 0, 255)).save(root / "added.png")
    third = C.cached_folder(root, PRE, tmp_path / "cache", threads=2)
    assert third.report.decoded == 2 and third.report.reused == len(first) - 2  # changed + added
    rel = changed.relative_to(root).as_posix()
    new_row = third.images[third.collection.paths.index(rel)]
    assert new_row[..., 0].min() >= 250 and new_row[..., 1].max() <= 5  # the new (JPEG red) pixels
    assert removed.relative_to(root).as_posix() not in third.collection.paths
    assert len(list((tmp_path / "cache").rglob("images-*.u8"))) == 1  # the old data file is gone


def test_bad_files_are_skipped_with_reasons_and_counted_in_the_log(folder, tmp_path, caplog):
    root, verdicts = folder
    with caplog.at_level(logging.INFO, logger="trainer.cache"):
        ds = C.cached_folder(root, PRE, tmp_path / "cache", threads=2)
    skipped = dict(ds.skipped)
    assert sorted(p.split("/")[1] for p in skipped) == sorted(n for n, v in verdicts.items() if v == "skip")
    kinds = {p.split("/")[1]: reason.split(":")[0] for p, reason in skipped.items()}
    assert kinds == {"truncated.jpg": "corrupt", "zero.jpg": "empty file", "text.png": "not an image",
                     "panorama.jpg": "extreme aspect", "huge.png": "too large"}
    for name in (n for n, v in verdicts.items() if v == "ok"):
        assert f"odd/{name}" in ds.collection.paths, name
    summary = [r.message for r in caplog.records if r.message.startswith("image cache:")][-1]
    assert f"{len(skipped)} skipped" in summary and "corrupt: 1" in summary
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(skipped)
    # the labels follow the kept files: 'odd' is a class of its own, the others keep theirs
    assert [ds.collection.classes[y] for y in ds.collection.labels] == [p.split("/")[0] for p in ds.collection.paths]


def test_huge_jpeg_decodes_in_draft_mode_close_to_a_full_decode(folder):
    root, _ = folder
    path = root / "odd" / "huge.jpg"
    drafted = C.decode_square(path, PRE).astype(np.int16)
    full = np.asarray(PRE.fit(load_rgb(path))).astype(np.int16)  # what a query would see, 51 MP decoded
    assert np.abs(drafted - full).mean() < 1.5 and np.abs(drafted - full).max() < 40


def test_squash_geometry_for_small_images(tmp_path):
    small = Preprocess.for_size(32, IMAGENET_MEAN, IMAGENET_STD)
    root = photos.make_photo_folder(tmp_path / "small", 6, seed=2, short=(20, 40), png=0.5)
    ds = C.cached_folder(root, small, tmp_path / "cache")
    assert ds.images.shape == (6, 32, 32, 3)
    for i, p in enumerate(ds.collection.paths):
        assert np.array_equal(ds.images[i], np.asarray(load_rgb(root / p).resize((32, 32), Image.BILINEAR)))


def test_no_room_on_disk_raises_cache_unavailable(folder, tmp_path, monkeypatch):
    root, _ = folder
    monkeypatch.setattr(C, "FREE_DISK_MARGIN", 1 << 60)
    with pytest.raises(C.CacheUnavailable, match="GiB are free"):
        C.cached_folder(root, PRE, tmp_path / "cache")


def test_training_falls_back_to_the_pil_loader_without_room_for_the_cache_and_says_so(tmp_path, monkeypatch,
                                                                                       caplog):
    """(With room, training takes the cache: tests/service/test_photo_jobs.py.)"""
    from trainer.config import TrainConfig
    from trainer.train import train

    root = photos.make_photo_folder(tmp_path / "images", 12, seed=13, short=(90, 140))
    monkeypatch.setattr(C, "FREE_DISK_MARGIN", 1 << 60)
    cfg = TrainConfig(data=str(root), arch="resnet18", width=4, dim=8, epochs=1, batch_size=4, device="cpu",
                      out=str(tmp_path / "run"), progress=False, knn_every=0, knn_k=(3,), workers=0,
                      cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert metrics["images"] == 12
    assert "per-image PIL loader instead" in caplog.text and "LoaderFeed path" in caplog.text
    assert (tmp_path / "run" / "export" / "preprocess.json").exists()
