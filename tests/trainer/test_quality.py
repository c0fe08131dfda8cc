"""Label-free quality: each figure against a brute-force loop, and the whole measure on real encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.data import CIFAR10_MEAN, CIFAR10_STD
from trainer.model import build_encoder
from trainer.preprocess import Preprocess
from trainer.quality import (
    alignment,
    copy_views,
    duplicate_figures,
    duplicate_threshold,
    measure,
    nearest_other,
    sample_ids,
    sample_key,
    self_retrieval,
    separating_threshold,
    uniformity,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_self_retrieval_matches_a_loop():
    gallery = unit(40, 8)
    ids = torch.tensor([0, 3, 7, 12, 39])
    views = F.normalize(gallery[ids] + 0.6 * unit(5, 8, seed=1), dim=1)
    got = self_retrieval(views, gallery, ids, ks=(1, 3, 10))
    for k in (1, 3, 10):
        hits = 0
        for v, i in zip(views, ids, strict=True):
            sims = [float(v @ g) for g in gallery]
            rank = sum(s > sims[int(i)] for s in sims)
            hits += rank < k
        assert math.isclose(got[f"self_top{k}"], 100.0 * hits / len(ids), abs_tol=1e-9)
    assert self_retrieval(gallery[ids], gallery, ids)["self_top1"] == 100.0  # a view equal to its image


def test_alignment_and_uniformity_match_numpy():
    a, b = unit(12, 6, seed=2), unit(12, 6, seed=3)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    assert math.isclose(alignment(a, b), float(np.mean(np.sum((an - bn) ** 2, 1))), rel_tol=1e-5)
    pairs = [np.exp(-2 * np.sum((an[i] - an[j]) ** 2)) for i in range(12) for j in range(12) if i != j]
    assert math.isclose(uniformity(a), math.log(np.mean(pairs)), rel_tol=1e-4)
    collapsed = unit(1, 6).expand(12, 6)
    assert uniformity(collapsed) > uniformity(a) and math.isclose(uniformity(collapsed), 0.0, abs_tol=1e-5)


def test_sample_is_fixed_by_seed_and_key_names_gallery_and_sample():
    assert np.array_equal(sample_ids(50, 10), sample_ids(50, 10))
    assert len(set(sample_ids(50, 10).tolist())) == 10 and np.array_equal(sample_ids(7, 10), np.arange(7))
    paths = [f"c/{i}.png" for i in range(50)]
    ids = sample_ids(50, 10)
    assert sample_key(paths, ids, 0) == sample_key(list(paths), ids.copy(), 0)
    assert sample_key(paths, ids, 0) != sample_key([*paths, "c/new.png"], ids, 0)
    assert sample_key(paths, ids, 0) != sample_key(paths, ids, 1)
    assert sample_key(paths, ids, 0) != sample_key(paths, ids, 0, hflip=True)  # other views, other figures


def random_encoder_and_gallery():
    """24 random 16 px images, an untrained airnet, and its embeddings of them (24 x 16)."""
    images = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    pre = Preprocess.for_size(16, CIFAR10_MEAN, CIFAR10_STD)
    torch.manual_seed(0)
    encoder = build_encoder("airnet", 16, 16, width=8).eval()
    with torch.no_grad():
        gallery = encoder(pre.device_eval(torch.from_numpy(images)))  # 24 x 16
    return images, pre, encoder, gallery


def test_measure_is_deterministic_and_rates_a_clean_identity_above_noise():
    images, pre, encoder, gallery = random_encoder_and_gallery()
    ids = np.arange(24)
    first = measure(encoder, images, ids, gallery, pre, hflip=False)
    assert first == measure(encoder, images, ids, gallery, pre, hflip=False)
    assert 0 <= first["self_top1"] <= first["self_top10"] <= 100
    assert 0 <= first["alignment"] <= 4 and first["uniformity"] <= 0
    assert first["sample_size"] == 24


def test_separating_threshold_minimises_the_two_error_rates_like_a_scan():
    rng = np.random.default_rng(1)
    for _ in range(20):
        same = rng.normal(0.9, 0.05, rng.integers(1, 40))
        other = rng.normal(0.75, 0.08, rng.integers(1, 40))
        t = separating_threshold(same, other)

        def errors(x, same=same, other=other):
            return np.mean(same < x) + np.mean(other >= x)

        candidates = np.concatenate([same, other, [2.0]])
        assert math.isclose(errors(t), min(errors(c) for c in candidates), abs_tol=1e-12)
    # apart: midway in the gap; the figures say what it keeps
    assert math.isclose(separating_threshold([0.9, 0.95], [0.5, 0.7]), 0.8)
    figures = duplicate_figures(np.array([0.9, 0.95, 0.6]), np.array([0.5, 0.7]))
    assert figures["duplicate_recall"] == pytest.approx(200 / 3) and figures["duplicate_nearest_above"] == 0.0
    # overlapping: the balanced point would link a third of the images to a distinct one; capped at 5%
    other = np.linspace(0.0, 0.99, 100)
    same = np.concatenate([np.linspace(0.3, 1.0, 100)])
    assert separating_threshold(same, other) < np.quantile(other, 0.95)
    assert duplicate_threshold(same, other) == pytest.approx(np.quantile(other, 0.95))
    assert duplicate_figures(same, other)["duplicate_nearest_above"] <= 5.0


def test_copy_views_crop_resize_and_reencode_deterministically():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    first, again = copy_views([img] * 20, seed=3), copy_views([img] * 20, seed=3)
    assert [np.asarray(a).tobytes() for a in first] == [np.asarray(b).tobytes() for b in again]
    for view in first:
        area = view.width * view.height
        assert view.mode == "RGB" and 0.6 * 0.75**2 * 4800 * 0.9 <= area <= 0.9 * 1.5**2 * 4800 * 1.1
    assert len({v.size for v in first}) > 5


def test_nearest_other_matches_a_loop():
    gallery = unit(30, 5, seed=4)
    rows = torch.tensor([0, 4, 29, 11])
    got = nearest_other(gallery[rows], gallery, rows, chunk=7)
    for q, r in zip(gallery[rows], rows, strict=True):
        expected = max(float(q @ g) for j, g in enumerate(gallery) if j != int(r))
        assert math.isclose(float(got[list(rows).index(r)]), expected, rel_tol=1e-5)


def test_measure_calibrates_a_duplicate_threshold():
    images, pre, encoder, gallery = random_encoder_and_gallery()
    figures = measure(encoder, images, np.arange(24), gallery, pre, hflip=False)
    assert -1 <= figures["duplicate_threshold"] <= 1 and figures["duplicate_sample"] == 24
    assert 0 <= figures["duplicate_recall"] <= 100 and 0 <= figures["duplicate_nearest_above"] <= 100
