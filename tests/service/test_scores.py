"""Percentile scores against brute force over every pair."""

from __future__ import annotations

import numpy as np
import pytest

from service.live.scores import ScoreScale


def test_percentile_matches_brute_force_over_all_pairs():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(30, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scale = ScoreScale.of_vectors(v, sample=100)
    pairs = [float(v[i] @ v[j]) for i in range(30) for j in range(i + 1, 30)]
    queries = np.array([-1.0, pairs[3], 0.0, 0.5, 1.0])
    want = [100.0 * sum(p < q for p in pairs) / len(pairs) for q in queries]
    np.testing.assert_allclose(scale.percentile(queries), want)


def test_crowded_cosines_still_spread_over_percentiles():
    """Embeddings of a young model: every cosine near 0.9998; percentiles still tell them apart."""
    rng = np.random.default_rng(1)
    v = np.ones((200, 16)) + 0.01 * rng.normal(size=(200, 16))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scale = ScoreScale.of_vectors(v, sample=64, seed=3)
    cosines = np.quantile(scale.sorted, [0.1, 0.5, 0.9])
    assert cosines.min() > 0.999 and f"{cosines.min():.3f}" == f"{cosines.max():.3f}"  # look equal at 3 digits
    np.testing.assert_allclose(scale.percentile(cosines), [10, 50, 90], atol=0.1)


def test_a_scale_needs_two_images():
    with pytest.raises(ValueError, match="at least one pair"):
        ScoreScale.of_vectors(np.ones((1, 4)))
