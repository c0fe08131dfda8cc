"""Label-free quality: each figure against a brute-force loop, and the whole measure on real encoders."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import CIFAR10_MEAN, CIFAR10_STD
from trainer.model import build_encoder
from trainer.preprocess import Preprocess
from trainer.quality import alignment, measure, sample_ids, sample_key, self_retrieval, uniformity


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


def test_measure_is_deterministic_and_rates_a_clean_identity_above_noise():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    pre = Preprocess.for_size(16, CIFAR10_MEAN, CIFAR10_STD)
    torch.manual_seed(0)
    encoder = build_encoder("airnet", 16, 16, width=8).eval()

    with torch.no_grad():
        gallery = encoder(pre.device_eval(torch.from_numpy(images)))  # 24 x 16
    ids = np.arange(24)
    first = measure(encoder, images, ids, gallery, pre, hflip=False)
    assert first == measure(encoder, images, ids, gallery, pre, hflip=False)
    assert 0 <= first["self_top1"] <= first["self_top10"] <= 100
    assert 0 <= first["alignment"] <= 4 and first["uniformity"] <= 0
    assert first["sample_size"] == 24
