"""Exact top-k for a few queries at a quarter of the memory traffic: scan int8 codes, rescore in fp32.

A single exact query reads every stored vector (50,000 x 128 fp32 = 25.6 MB), so on a CPU it is bound by memory
bandwidth. This filter keeps an int8 copy of the vectors (a quarter of the bytes), scans it with FAISS for the W
most promising candidates, rescores those against the fp32 vectors, and proves from a bound on the quantisation
error that no vector outside them can enter the top-k. The answer is the exact index's top-k (its fp32 scores
agree to the last bits: numpy and FAISS sum in different orders).

Codes: c_i = round(a x_i) with one scale a = 127 / max |x_id|, residuals e_i = c_i - a x_i, ||e_i|| <= R. The
query is rounded at its own scale: u = round(b q), b = 127 / max |q_d|, f = u - b q, ||f|| = rho. FAISS's
int8 kernel computes D_i = ||u - c_i||^2 exactly in integers (its inner-product variant returns zeros in
faiss-cpu 1.15), and u.c_i = ab q.x_i + b q.e_i + a f.x_i + f.e_i, so for a unit query

    q.x_i <= upper(D_i) = (||u||^2 + C - D_i) / 2ab + R / a + rho X / b + rho R / ab + slack

with C = max ||c_i||^2, X = max ||x_i|| and a slack for fp32 rounding. FAISS returns the W smallest D, so every
vector outside the candidates scores at most upper(D_W). When that is below the k-th best rescored candidate,
the candidates hold the whole top-k. Otherwise (near-duplicate scores everywhere, or a query far from all
codes) the query goes to the exact index: it costs one int8 scan more, and the answer stays exact.
"""

from __future__ import annotations

import functools
import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)

CODE_MAX = 127  # int8 codes in [-127, 127]
FP32_SLACK = 1e-4  # >> the rounding of fp32 scores and of the unit query (D_i itself is exact)
MAX_WIDTH = 1024  # candidates (k <= 320): the heap and the rescoring grow with the width; larger k scan fp32
MAX_WIDTH_FRACTION = 1 / 8  # of the collection: wider, the rescoring reads as much as the fp32 scan
MIN_VECTORS = 12_288  # below this (6 MB of fp32 at 128-d) the fp32 scan stays in cache and is as fast


def candidate_width(k: int) -> int:
    """Candidates fetched for a top-k: k plus a margin that covers the error bound's window (the p99 window over
    50,000 synthetic or CIFAR-10 vectors: 19-37 candidates at k=10, 193-228 at k=100, 469-662 at k=300; see
    docs/index-benchmark*.md)."""
    return 3 * k + 64


@functools.cache
def int8_kernel_is_exact(dim: int) -> bool:
    """Whether this FAISS build's int8 L2 kernel returns exact integer distances at this dimension: the bound
    rests on it, and kernels differ by SIMD level. Distances must stay below 2^24 to be exact in fp32 (so
    dim <= 260); the kernel itself is checked once per dimension on extreme and random codes."""
    if (2 * CODE_MAX) ** 2 * dim >= 2**24:
        log.info("%d dimensions: int8 distances could pass 2^24, exact search scans fp32 vectors only", dim)
        return False
    rng = np.random.default_rng(0)
    codes = rng.integers(-CODE_MAX, CODE_MAX + 1, (64, dim)).astype(np.float32)  # 64 x D
    codes[:2] = [[CODE_MAX], [-CODE_MAX]]  # the largest and smallest distances the kernel must hold exactly
    query = np.full((1, dim), -CODE_MAX, dtype=np.float32)  # 1 x D
    probe = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_L2)
    probe.add(codes)
    dist, rows = probe.search(query, len(codes))  # 1 x 64 each
    want = ((codes[rows[0]].astype(np.int64) - query.astype(np.int64)) ** 2).sum(axis=1)  # 64
    if not np.array_equal(dist[0].astype(np.int64), want):
        log.warning("FAISS's int8 kernel is not exact on this build: exact search scans fp32 vectors only")
        return False
    return True


class Int8Prefilter:
    """Int8 codes of an exact (IDMap2,Flat) inner-product index, for exact search of a few queries.

    vectors: N x D float32 in the index's internal order, ids: N int64; `owner` keeps alive the index whose
    memory `vectors` may view. Read-only after construction: safe for concurrent searches.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, owner: object = None):
        n, dim = vectors.shape
        self.vectors, self.ids, self._owner = vectors, ids, owner
        self.scale = CODE_MAX / max(float(np.abs(vectors).max()), 1e-12)  # a
        codes = np.rint(vectors * self.scale).astype(np.float32)  # N x D, integers in [-127, 127]
        self.residual = float(np.linalg.norm(codes - self.scale * vectors.astype(np.float64), axis=1).max())  # R
        self.max_code_sq = float(np.einsum("nd,nd->n", codes, codes, dtype=np.float64).max())  # C
        self.max_norm = float(np.sqrt(np.einsum("nd,nd->n", vectors, vectors, dtype=np.float64).max()))  # X
        self.codes = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_L2)
        self.codes.add(codes)
        self.max_width = min(MAX_WIDTH, int(n * MAX_WIDTH_FRACTION))

    @classmethod
    def of_index(cls, index: faiss.Index) -> Int8Prefilter | None:
        """The filter for an IDMap2 over Flat inner-product index big enough to gain from it, else None."""
        id_map = faiss.downcast_index(index)  # a view: `index` owns the memory
        if not isinstance(id_map, faiss.IndexIDMap2) or id_map.ntotal < MIN_VECTORS:
            return None
        flat = faiss.downcast_index(id_map.index)
        if not isinstance(flat, faiss.IndexFlat) or flat.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        if not int8_kernel_is_exact(flat.d):
            return None
        n, dim = flat.ntotal, flat.d
        vectors = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)  # N x D, the index's own memory
        return cls(vectors, faiss.vector_to_array(id_map.id_map), owner=index)

    def coarse(self, q: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """q: BxD unit rows -> (rows BxW, upper BxW) of the `width` best codes: upper[b, w] bounds the true score
        of rows[b, w] and, for the last w, of every vector not in rows[b]."""
        a, R, X = self.scale, self.residual, self.max_norm
        b = CODE_MAX / np.abs(q).max(axis=1, keepdims=True).astype(np.float64)  # B x 1
        bq = b * q  # B x D
        u = np.rint(bq)  # B x D integers: FAISS encodes them exactly
        f = u - bq  # B x D
        rho = np.sqrt(np.einsum("bd,bd->b", f, f))[:, None]  # B x 1
        dist, rows = self.codes.search(u.astype(np.float32), width)  # B x W each, exact integer distances
        offset = np.einsum("bd,bd->b", u, u)[:, None] + self.max_code_sq  # B x 1: ||u||^2 + C
        margin = R / a + rho * (X + R / a) / b + FP32_SLACK  # B x 1
        return rows, (offset - dist) / (2 * a * b) + margin

    def serves(self, k: int) -> bool:
        """Whether a top-k fits the candidate budget; larger k go to the exact index directly."""
        return candidate_width(k) <= self.max_width

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q: BxD unit rows -> (scores BxK, ids BxK, done B bool). Rows with done=False (-inf / -1) could not be
        settled from the candidates: the caller searches them exactly."""
        if not self.serves(k):  # FAISS would pad the candidates with row -1, which indexes the last vector
            raise ValueError(f"k={k} needs {candidate_width(k)} candidates, over this filter's {self.max_width}")
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        done = np.zeros(len(q), dtype=bool)
        rows, upper = self.coarse(q, candidate_width(k))  # B x W each, W < N
        for i in range(len(q)):
            top_scores, top_rows = self.rescore(q[i], rows[i], k)
            if upper[i, -1] < top_scores[-1]:  # nothing outside the candidates can beat the k-th of them
                scores[i], ids[i], done[i] = top_scores, self.ids[top_rows], True
        return scores, ids, done

    def rescore(self, query: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact fp32 scores of the candidate rows (C >= k) -> the best k (scores K, rows K), ties broken by
        internal row as FAISS breaks them."""
        exact = self.vectors[rows] @ query  # C
        order = np.lexsort((rows, -exact))[:k]  # K
        return exact[order], rows[order]
