"""Approximate indexes reach their recall@10 target on clustered data, on queries they never saw."""

import numpy as np
import pytest

from index.build import build_tuned
from index.config import IndexConfig
from index.plan import IndexSpec, choose_spec
from index.search import search_params
from index.tune import exact_neighbours, recall_at_k

N, D = 20_000, 32


@pytest.fixture(scope="module")
def data(vectors):
    x = vectors.clustered(N, D, spread=1.5, seed=0)
    queries = vectors.clustered(500, D, spread=1.5, seed=1)  # fresh: not in the collection
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    return x, ids, queries, exact_neighbours(x, ids, queries, 10)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_sq8"])
def test_ann_meets_recall_target(data, kind):
    x, ids, queries, truth = data
    cfg = IndexConfig(kind=kind, recall_target=0.95, tune_queries=500)
    spec = choose_spec(N, D, cfg)
    built = build_tuned(x, ids, spec, cfg)
    assert built.index.ntotal == N
    tuning = built.tuning
    assert tuning.recall >= 0.95 and tuning.target_met
    # the smallest setting that reaches the target: every smaller one tried fell short
    assert len(tuning.curve) > 1 and all(r < 0.95 for _, r in tuning.curve[:-1])
    assert tuning.value == tuning.curve[-1][0]
    _, found = built.index.search(queries, 10, params=search_params(spec, tuning.value, 10, N))
    assert recall_at_k(found, truth) >= 0.93  # fresh queries: the held-out estimate, within sampling error


def test_large_k_widens_the_search():
    ivf = IndexSpec("ivf_flat", D, nlist=1024)
    assert search_params(ivf, 1, 10, 50_000).nprobe == 1
    assert search_params(ivf, 1, 1000, 50_000).nprobe == 41  # lists of ~49: probe ~2000 vectors for k=1000
    assert search_params(ivf, 8, 1000, 10_000).nprobe == 205
    assert search_params(ivf, 8, 1000, 1000).nprobe == 1024
    assert search_params(IndexSpec("hnsw", D, hnsw_m=32), 24, 500, 10_000).efSearch == 500
    assert search_params(IndexSpec("flat", D), None, 500, 10_000) is None


def test_recall_at_k():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 1) / 2)


def test_unreachable_target_keeps_best_setting(data):
    x, ids, _, _ = data
    cfg = IndexConfig(kind="ivf_pq", pq_m=4, nlist=32, recall_target=1.0, tune_queries=200)
    built = build_tuned(x, ids, choose_spec(N, D, cfg), cfg)
    tuning = built.tuning
    assert not tuning.target_met
    assert tuning.recall == max(r for _, r in tuning.curve)
    assert tuning.curve[-1][0] == built.spec.nlist  # every setting was tried
