"""Weighted kNN voting: a constructed case with hand-computed votes, and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.knn import knn_accuracy, topk_neighbours, weighted_knn_scores


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def at_angle(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_constructed_vote():
    """One close class-0 neighbour against two farther class-1 neighbours: tau decides."""
    keys = torch.tensor([at_angle(0), at_angle(30), at_angle(40), at_angle(90), at_angle(180)])
    key_labels = torch.tensor([0, 1, 1, 2, 0])
    query = torch.tensor([at_angle(0)])
    sims, ids = topk_neighbours(query, keys, 3)
    assert ids.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(sims[0].numpy(), [1.0, math.cos(math.radians(30)), math.cos(math.radians(40))],
                               atol=1e-6)
    labels = key_labels[ids]
    # tau = 0.1: e^10 = 22026 for class 0 vs e^8.66 + e^7.66 = 7881 for class 1 -> class 0
    s = weighted_knn_scores(sims, labels, 3, 0.1)[0]
    c30, c40 = math.cos(math.radians(30)), math.cos(math.radians(40))
    np.testing.assert_allclose(s.numpy(), [math.exp(10), math.exp(c30 / 0.1) + math.exp(c40 / 0.1), 0],
                               rtol=1e-5)
    assert s.argmax().item() == 0
    # tau = 1: e^1 = 2.72 for class 0 vs e^0.866 + e^0.766 = 4.53 for class 1 -> class 1
    s = weighted_knn_scores(sims, labels, 3, 1.0)[0]
    np.testing.assert_allclose(s.numpy(), [math.e, math.exp(c30) + math.exp(c40), 0], rtol=1e-5)
    assert s.argmax().item() == 1
    # the same through knn_accuracy: query labelled 0 is right at tau 0.1 and wrong at tau 1
    y = torch.tensor([0])
    assert knn_accuracy(query, y, keys, key_labels, ks=(3,), tau=0.1)["top1@3"] == 100.0
    assert knn_accuracy(query, y, keys, key_labels, ks=(3,), tau=1.0)["top1@3"] == 0.0
    assert knn_accuracy(query, y, keys, key_labels, ks=(3,), tau=1.0)["nn1"] == 100.0


def test_weighted_scores_match_loop():
    g = torch.Generator().manual_seed(0)
    q, k, c, tau = 7, 9, 4, 0.07
    sims = torch.rand(q, k, generator=g) * 2 - 1
    labels = torch.randint(c, (q, k), generator=g)
    got = weighted_knn_scores(sims, labels, c, tau)
    ref = np.zeros((q, c))
    for i in range(q):
        for j in range(k):
            ref[i, labels[i, j]] += math.exp(float(sims[i, j]) / tau)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def brute_force_knn(queries, query_labels, keys, key_labels, ks, tau, exclude_self):
    """Loop over queries: sort all keys by cosine, vote exp(s/tau) of the k best, rank the classes."""
    qs, kk = queries.double().numpy(), keys.double().numpy()
    num_classes = int(max(key_labels.max(), query_labels.max())) + 1
    hits = {"nn1": 0, **{f"top1@{k}": 0 for k in ks}, **{f"top5@{k}": 0 for k in ks}}
    for i, (q, y) in enumerate(zip(qs, query_labels.tolist(), strict=True)):
        sims = [(float(q @ kk[j]), j) for j in range(len(kk)) if not (exclude_self and j == i)]
        sims.sort(reverse=True)
        hits["nn1"] += int(key_labels[sims[0][1]]) == y
        for k in ks:
            votes = [0.0] * num_classes
            for s, j in sims[:k]:
                votes[int(key_labels[j])] += math.exp(s / tau)
            hits[f"top1@{k}"] += max(range(num_classes), key=lambda c, v=votes: v[c]) == y
            # top-5: the true class has votes and fewer than 5 classes have more
            better = sum(v > votes[y] for v in votes)
            hits[f"top5@{k}"] += votes[y] > 0 and better < 5
    return {name: 100.0 * h / len(qs) for name, h in hits.items()}


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_accuracy_matches_brute_force(exclude_self):
    n, q, d, c = 120, 40, 8, 10
    keys = unit(n, d, seed=1)
    key_labels = torch.randint(c, (n,), generator=torch.Generator().manual_seed(2))
    # queries near some keys so the accuracies are neither 0 nor 100
    if exclude_self:
        queries, query_labels = keys[:q], key_labels[:q]
    else:
        queries = F.normalize(keys[:q] + 0.5 * unit(q, d, seed=3), dim=1)
        query_labels = key_labels[:q]
    ks = (1, 3, 10, 50)
    got = knn_accuracy(queries, query_labels, keys, key_labels, ks=ks, tau=0.07, exclude_self=exclude_self)
    ref = brute_force_knn(queries, query_labels, keys, key_labels, ks, 0.07, exclude_self)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name] == pytest.approx(ref[name], abs=1e-4), name
    assert 0 < got["top1@10"] < 100


def test_top5_needs_votes():
    """With k=1 only one class has votes; the others must not count as top-5 predictions."""
    keys = torch.eye(8)
    key_labels = torch.arange(8)
    queries = F.normalize(torch.eye(8) + 0.1 * torch.roll(torch.eye(8), 1, 1), dim=1)
    query_labels = (torch.arange(8) + 1) % 8  # the nearest key is always another class
    got = knn_accuracy(queries, query_labels, keys, key_labels, ks=(1,), tau=0.07)
    assert got["top1@1"] == 0.0
    assert got["top5@1"] == 0.0
    assert got["nn1"] == 0.0


@pytest.mark.parametrize("chunk,key_chunk", [(7, 11), (1, 1), (64, 5), (3, 1000)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_topk_equals_full_topk(chunk, key_chunk, exclude_self):
    n, q, d, k = 50, 20, 6, 8
    keys = unit(n, d, seed=4)
    queries = keys[:q] if exclude_self else unit(q, d, seed=5)
    full = queries @ keys.t()  # Q x N
    if exclude_self:
        full[torch.arange(q), torch.arange(q)] = float("-inf")
    ref_s, ref_i = full.topk(k, dim=1)
    sims, ids = topk_neighbours(queries, keys, k, chunk=chunk, key_chunk=key_chunk, exclude_self=exclude_self)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(sims, ref_s)
    if exclude_self:
        assert not (ids == torch.arange(q)[:, None]).any()


def test_exclude_self_never_returns_query():
    n, d = 13, 4
    keys = unit(n, d, seed=6)
    # k larger than n - 1 is clipped to every other key
    for chunk, key_chunk in [(1, 1), (4, 3), (100, 100)]:
        sims, ids = topk_neighbours(keys, keys, 50, chunk=chunk, key_chunk=key_chunk, exclude_self=True)
        assert ids.shape == (n, n - 1)
        assert torch.isfinite(sims).all()
        for i in range(n):
            assert sorted(ids[i].tolist()) == [j for j in range(n) if j != i]
