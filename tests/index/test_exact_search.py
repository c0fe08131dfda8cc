"""Exact search (IDMap2 over Flat, with and without the int8 prefilter) against a numpy brute force, and the
Searcher's contract."""

import threading

import faiss
import numpy as np
import pytest

from index.build import train_and_add
from index.errors import DimensionMismatchError
from index.metadata import ItemMeta, Metadata
from index.plan import IndexSpec
from index.prefilter import MIN_VECTORS, Int8Prefilter, int8_kernel_is_exact
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


def assert_exact_top_k(x: np.ndarray, ids: np.ndarray, q: np.ndarray, scores: np.ndarray, found: np.ndarray):
    """found (QxK ids) is a top-k of brute force: its ids' true scores are the k best, in order. fp32 rounding
    differs between BLAS and FAISS kernels, so ids may swap only where true scores tie within 1e-5."""
    want_scores, _ = brute_force(x, ids, q, found.shape[1])
    row_of = {int(i): r for r, i in enumerate(ids)}
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    true = np.array([[q[b] @ x[row_of[int(i)]] for i in row] for b, row in enumerate(found)])  # Q x K
    np.testing.assert_allclose(true, want_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in found.tolist())


@pytest.mark.parametrize("nq, k", [(1, 1), (7, 10), (64, 100), (3, 1000)])
def test_exact_equals_brute_force(vectors, nq, k):
    x = vectors.random(3000, 24, seed=1)
    ids = np.random.default_rng(2).permutation(100_000)[:3000].astype(np.int64)  # sparse, unordered ids
    q = 3.0 * vectors.random(nq, 24, seed=3)  # not unit: the searcher normalises
    scores, found = make_searcher(x, ids).search_arrays(q, k)
    assert_exact_top_k(x, ids, q, scores, found)


@pytest.mark.parametrize("nq, k", [(1, 1), (1, 10), (5, 100), (2, 300)])
def test_prefilter_is_exact(vectors, nq, k):
    x = vectors.clustered(20_000, 32, clusters=200, seed=5)
    ids = np.random.default_rng(6).permutation(1_000_000)[:20_000].astype(np.int64)
    q = vectors.clustered(nq, 32, clusters=200, seed=7)
    searcher = make_searcher(x, ids)
    assert searcher.prefilter.serves(k)
    _, _, done = searcher.prefilter.search(q, k)
    assert done.all()  # settled by the int8 scan, without falling back to the flat index
    scores, found = searcher.search_arrays(q, k)
    assert_exact_top_k(x, ids, q, scores, found)


def test_large_k_goes_to_the_flat_index(vectors):
    x = vectors.clustered(20_000, 32, seed=5)
    ids = np.arange(20_000, dtype=np.int64)
    searcher = make_searcher(x, ids)
    assert not searcher.prefilter.serves(1000)
    q = vectors.clustered(1, 32, seed=7)
    scores, found = searcher.search_arrays(q, 1000)
    assert_exact_top_k(x, ids, q, scores, found)


def test_prefilter_error_bound_holds(vectors):
    """The bound from int8 distances is above every true score, for rows off unit norm by up to 1e-3 too,
    and close enough to prune."""
    rng = np.random.default_rng(8)
    x = vectors.clustered(MIN_VECTORS, 16, seed=9) * rng.uniform(0.999, 1.001, (MIN_VECTORS, 1)).astype(np.float32)
    prefilter = Int8Prefilter(x, np.arange(MIN_VECTORS))
    q = vectors.random(20, 16, seed=10)
    rows, upper = prefilter.coarse(q, MIN_VECTORS)  # Q x N each
    true = np.take_along_axis(q @ x.T, rows, 1)
    assert (true <= upper).all()
    assert (upper - true).max() < 0.2
    assert (np.diff(upper, axis=1) <= 0).all()  # rows come best bound first: the last bounds everything outside


def test_prefilter_falls_back_on_near_ties(vectors):
    """Vectors within a hair of one direction leave every score inside the error window: the filter hands the
    queries to the flat index, and the answer stays exact."""
    rng = np.random.default_rng(11)
    n = MIN_VECTORS + 1000
    x = vectors.random(1, 16)[0] + 1e-3 * rng.standard_normal((n, 16)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    searcher = make_searcher(x, ids)
    q = x[:3] + 0.01 * vectors.random(3, 16, seed=12)
    _, _, done = searcher.prefilter.search(q / np.linalg.norm(q, axis=1, keepdims=True), 10)
    assert not done.any()
    scores, found = searcher.search_arrays(q, 10)
    assert_exact_top_k(x, ids, q, scores, found)


def test_prefilter_after_removal(vectors):
    n = 2 * MIN_VECTORS
    x = vectors.clustered(n, 16, seed=13)
    ids = np.arange(n, dtype=np.int64)
    index = train_and_add(IndexSpec("flat", 16), x, ids)
    gone = np.arange(0, n, 3)
    index.remove_ids(gone)
    keep = np.setdiff1d(ids, gone)
    prefilter = Int8Prefilter.of_index(index)
    q = vectors.clustered(4, 16, seed=14)
    scores, found, done = prefilter.search(q, 50)
    assert done.all()
    assert_exact_top_k(x[keep], keep, q, scores, found)


def test_prefilter_only_for_large_flat_indexes(vectors):
    small = train_and_add(IndexSpec("flat", 8), vectors.random(MIN_VECTORS - 1, 8), np.arange(MIN_VECTORS - 1))
    hnsw = faiss.index_factory(8, "IDMap2,HNSW8,Flat", faiss.METRIC_INNER_PRODUCT)
    assert Int8Prefilter.of_index(small) is None and Int8Prefilter.of_index(hnsw) is None


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


def test_prefilter_under_concurrent_searches(vectors):
    """Threads sharing one prefiltered searcher each get the brute-force answer to their own queries."""
    x = vectors.clustered(MIN_VECTORS + 1000, 16, seed=15)
    ids = np.arange(MIN_VECTORS + 1000, dtype=np.int64)
    searcher = make_searcher(x, ids)
    assert searcher.prefilter is not None
    queries = [vectors.clustered(40, 16, seed=100 + t) for t in range(4)]
    results: dict[int, tuple] = {}

    def search_all(t: int):
        found = [searcher.search_arrays(q, 10) for q in queries[t]]
        results[t] = (np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found]))

    threads = [threading.Thread(target=search_all, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t, (scores, found) in results.items():
        assert_exact_top_k(x, ids, queries[t], scores, found)


def test_int8_kernel_is_checked():
    """The prefilter runs only where FAISS's int8 distances are exact: up to 260 dimensions on this build."""
    assert int8_kernel_is_exact(16) and int8_kernel_is_exact(128) and int8_kernel_is_exact(260)
    assert not int8_kernel_is_exact(261)  # distances could pass 2^24, where fp32 stops holding every integer


def test_prefilter_keeps_its_index_alive(vectors):
    """The filter rescores from a view of the FAISS index's memory: dropping the caller's index must not free it."""
    x = vectors.random(MIN_VECTORS, 16, seed=16)
    prefilter = Int8Prefilter.of_index(train_and_add(IndexSpec("flat", 16), x, np.arange(MIN_VECTORS)))
    clutter = [np.random.default_rng(i).random((MIN_VECTORS, 16), dtype=np.float32) for i in range(10)]
    assert len(clutter) == 10 and np.array_equal(prefilter.vectors, x)
    with pytest.raises(ValueError, match="candidates"):
        prefilter.search(x[:1], 1000)  # beyond the candidate budget: refused, never padded rows
