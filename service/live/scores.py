"""Scores people can read: a hit's cosine placed among the cosines of random pairs of the collection.

A young NPID model (a few CPU minutes) leaves its embeddings concentrated: every cosine of a search reads
0.9998 or so, and three printed digits show 1.000 for all of them. The raw cosine is still exact (the API
returns it as a full float), but to tell neighbours apart a reader needs a scale. The scale here is the
version's own: the cosines of all pairs among a seeded sample of its images. A hit's `percentile` is the
share of those random pairs that are less similar than the hit (100 = more similar than any sampled pair),
so it reads the same whether the cosines of a version crowd near 1 or spread over [-1, 1].
"""

from __future__ import annotations

import numpy as np

PAIR_SAMPLE = 2048  # images; their 2,096,128 pairs resolve percentiles to about 5e-5 points
PAIR_SEED = 0


class ScoreScale:
    """The sorted cosines of random pairs of a collection; maps a cosine to its percentile among them."""

    def __init__(self, pair_cosines: np.ndarray):
        if pair_cosines.size == 0:
            raise ValueError("a score scale needs at least one pair (two images)")
        self.sorted = np.sort(pair_cosines.astype(np.float64))

    @classmethod
    def of_vectors(cls, vectors: np.ndarray, sample: int = PAIR_SAMPLE, seed: int = PAIR_SEED) -> ScoreScale:
        """vectors: N x D unit rows (N >= 2); pairs i < j among min(N, sample) rows drawn with `seed`."""
        n = len(vectors)
        pick = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        v = np.asarray(vectors[pick], dtype=np.float64)  # S x D
        sims = v @ v.T  # S x S
        return cls(sims[np.triu_indices(len(v), k=1)])  # S(S-1)/2 pairs

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Share (%) of sampled pairs strictly less similar than each score. scores: K -> K."""
        below = np.searchsorted(self.sorted, np.asarray(scores, dtype=np.float64), side="left")
        return 100.0 * below / len(self.sorted)
