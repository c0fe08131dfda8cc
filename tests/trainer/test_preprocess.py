"""The eval transform: the device version on cached squares equals the PIL one; the format is versioned."""

from __future__ import annotations

import json

import numpy as np
import photos
import pytest
import torch

from trainer.data import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from trainer.preprocess import PREPROCESS_FORMAT, Preprocess


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return photos.make_photo_folder(tmp_path_factory.mktemp("photos"), 24, seed=7, short=(40, 300), rotated=0.3)


@pytest.mark.parametrize("size", [32, 64, 96, 128])
def test_device_eval_on_fitted_squares_equals_the_pil_eval_transform(folder, size):
    pre = Preprocess.for_size(size, IMAGENET_MEAN, IMAGENET_STD)
    transform = pre.eval_transform()
    files = sorted(folder.rglob("*.*"))
    images = [load_rgb(f) for f in files]
    reference = torch.stack([transform(im) for im in images])  # N x 3 x C x C, PIL + torchvision
    squares = torch.from_numpy(np.stack([np.asarray(pre.fit(im)) for im in images]))  # N x S x S x 3 uint8
    assert squares.shape[1:] == (pre.stored_size, pre.stored_size, 3)
    got = pre.device_eval(squares)
    assert got.shape == reference.shape
    assert (got - reference).abs().max().item() <= 1e-6  # the same pixels, not a near copy


def test_photo_and_small_geometry():
    photo = Preprocess.for_size(96, IMAGENET_MEAN, IMAGENET_STD)
    small = Preprocess.for_size(64, IMAGENET_MEAN, IMAGENET_STD)
    assert (photo.resize, photo.stored_size, photo.squash) == (110, 110, False)  # 96 / 0.875
    assert (small.resize, small.stored_size, small.squash) == (64, 64, True)
    with pytest.raises(ValueError, match="110 px squares"):
        photo.device_eval(torch.zeros(1, 96, 96, 3, dtype=torch.uint8))


def test_format_round_trip_old_files_and_newer_formats(tmp_path):
    pre = Preprocess.for_size(128, IMAGENET_MEAN, IMAGENET_STD)
    pre.save(tmp_path / "p.json")
    assert Preprocess.load(tmp_path / "p.json") == pre and pre.format == PREPROCESS_FORMAT
    old = {"image_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.25] * 3}  # format 1: no key
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Preprocess.load(tmp_path / "old.json").format == 1
    (tmp_path / "new.json").write_text(json.dumps({**old, "format": PREPROCESS_FORMAT + 1}))
    with pytest.raises(ValueError, match="newer"):
        Preprocess.load(tmp_path / "new.json")
