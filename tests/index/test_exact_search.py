"""Exact search (IDMap2 over Flat) against a numpy brute force, and the Searcher's contract."""

import numpy as np
import pytest

from index.build import train_and_add
from index.errors import DimensionMismatchError
from index.metadata import ItemMeta, Metadata
from index.plan import IndexSpec
from index.search import Searcher


def make_searcher(x: np.ndarray, ids: np.ndarray) -> Searcher:
    spec = IndexSpec("flat", x.shape[1])
    items = [ItemMeta(int(i), f"p/{i}.jpg", "a" if i % 2 else None, 4, 3, None, "t") for i in ids]
    return Searcher(train_and_add(spec, x, ids), spec, None, Metadata(items), x)


def brute_force(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ x.T  # Q x N
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # Q x K
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.mark.parametrize("nq, k", [(1, 1), (7, 10), (64, 100), (3, 1000)])
def test_exact_equals_brute_force(vectors, nq, k):
    x = vectors.random(3000, 24, seed=1)
    ids = np.random.default_rng(2).permutation(100_000)[:3000].astype(np.int64)  # sparse, unordered ids
    q = 3.0 * vectors.random(nq, 24, seed=3)  # not unit: the searcher normalises
    scores, found = make_searcher(x, ids).search_arrays(q, k)
    want_scores, want_ids = brute_force(x, ids, q, k)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)


def test_hits_carry_metadata_and_respect_min_score(vectors):
    x = vectors.random(500, 8, seed=4)
    ids = np.arange(1000, 1500, dtype=np.int64)
    searcher = make_searcher(x, ids)
    hits = searcher.search(x[:2], k=20)
    assert [len(h) for h in hits] == [20, 20]
    assert hits[0][0].id == 1000 and hits[1][0].id == 1001
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0][3].item == searcher.metadata.get(hits[0][3].id)
    scores = [h.score for h in hits[0]]
    assert scores == sorted(scores, reverse=True)
    threshold = hits[0][5].score
    filtered = searcher.search(x[:1], k=20, min_score=threshold)[0]
    assert [h.id for h in filtered] == [h.id for h in hits[0][:6]]
    assert searcher.search(x[:1], k=20, min_score=1.01) == [[]]


def test_k_larger_than_collection_pads(vectors):
    x = vectors.random(5, 8)
    searcher = make_searcher(x, np.arange(5, dtype=np.int64))
    scores, ids = searcher.search_arrays(x[:1], 7)
    assert list(ids[0, 5:]) == [-1, -1] and np.isneginf(scores[0, 5:]).all()
    assert len(searcher.search(x[:1], 7)[0]) == 5


def test_query_validation(vectors):
    x = vectors.random(50, 8)
    searcher = make_searcher(x, np.arange(50, dtype=np.int64))
    assert searcher.search(x[0], 3)[0][0].id == 0  # a single D vector is a batch of one
    with pytest.raises(DimensionMismatchError):
        searcher.search(np.ones((2, 9), np.float32))
    for k in (0, 1001):
        with pytest.raises(ValueError, match="k must be"):
            searcher.search(x[:1], k)
    with pytest.raises(ValueError, match="NaN"):
        searcher.search(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="zeros"):
        searcher.search(np.zeros((1, 8), np.float32))


def test_vector_by_id(vectors):
    x = vectors.random(40, 8)
    ids = np.arange(40, dtype=np.int64)[::-1].copy()
    searcher = make_searcher(x, ids)
    np.testing.assert_array_equal(searcher.vector(39), x[0])
    with pytest.raises(KeyError):
        searcher.vector(40)
