"""Near-duplicate groups (index/duplicates.py) against brute force: loops over all pairs on small random inputs,
the incremental graph of a version with adds and deletes against an exact pass, every index kind alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index import ArtifactStore, IndexConfig, NewItem
from index.duplicates import KnnGraph, components, duplicate_groups, exact_knn, live_graph, segment_knn


def with_copies(vectors, n: int, d: int, copies: int, noise: float, seed: int) -> np.ndarray:
    """n random unit vectors, the last `copies` of them noisy copies of random earlier ones."""
    rng = np.random.default_rng(seed)
    x = vectors.random(n, d, seed).astype(np.float64)
    for i in range(n - copies, n):
        x[i] = x[rng.integers(0, n - copies)] + noise * rng.standard_normal(d) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_groups(x: np.ndarray, ids: np.ndarray, k: int, threshold: float) -> set[tuple]:
    """Loops over all pairs: each image's k most similar others, the links >= threshold, components by search,
    each member's best cosine to another member of its group. -> {((id, score), ...) sorted by id}"""
    n = len(x)
    sims = [[float(np.dot(x[i].astype(np.float64), x[j].astype(np.float64))) for j in range(n)] for i in range(n)]
    links = {i: set() for i in range(n)}
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -sims[i][j])[:k]
        for j in others:
            if sims[i][j] >= threshold:
                links[i].add(j)
                links[j].add(i)
    seen, found = set(), set()
    for start in range(n):
        if start in seen or not links[start]:
            continue
        group, todo = {start}, [start]
        while todo:
            for j in links[todo.pop()]:
                if j not in group:
                    group.add(j)
                    todo.append(j)
        seen |= group
        found.add(tuple(sorted((int(ids[i]), round(max(sims[i][j] for j in links[i]), 4)) for i in group)))
    return found


def as_set(groups) -> set[tuple]:
    return {tuple(sorted((int(i), round(float(s), 4)) for i, s in zip(g.ids, g.scores, strict=True)))
            for g in groups}


def test_components_match_a_search_over_all_pairs():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        a, b = rng.integers(0, n, 2 * n), rng.integers(0, n, 2 * n)
        label = components(n, a, b)
        adjacent = {i: {i} for i in range(n)}
        for i, j in zip(a, b, strict=True):
            adjacent[int(i)].add(int(j))
            adjacent[int(j)].add(int(i))
        for i in range(n):  # the component of i by search, named by its smallest node
            group, todo = {i}, [i]
            while todo:
                for j in adjacent[todo.pop()] - group:
                    group.add(j)
                    todo.append(j)
            assert label[i] == min(group)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 10, 59])
def test_groups_match_brute_force_on_random_vectors(vectors, seed, k):
    x = with_copies(vectors, 60, 8, copies=12, noise=0.3, seed=seed)
    ids = np.random.default_rng(seed).permutation(1000)[:60].astype(np.int64)
    graph = KnnGraph(ids, *exact_knn(x, x, k, own=np.arange(60)))
    for threshold in (0.99, 0.9, 0.6, 0.0, -1.0):
        groups = duplicate_groups(graph, threshold)
        assert as_set(groups) == brute_groups(x, ids, k, threshold), threshold
        sizes = [g.size for g in groups]
        assert sizes == sorted(sizes, reverse=True) and all(s >= 2 for s in sizes)
        for g in groups:
            assert list(g.scores) == sorted(g.scores, reverse=True) and g.best == g.scores[0]
    assert sum(g.size for g in duplicate_groups(graph, -1.0)) == 60  # every link: one group of everything


def test_exact_knn_matches_a_loop_and_chunks_agree(vectors):
    x = vectors.random(50, 6, 3)
    s, r = exact_knn(x, x, 5, own=np.arange(50), chunk=7)
    s2, r2 = exact_knn(x, x, 5, own=np.arange(50))
    assert np.array_equal(r, r2) and np.allclose(s, s2)
    for i in range(50):
        expected = sorted((j for j in range(50) if j != i), key=lambda j: -float(x[i] @ x[j]))[:5]
        assert list(r[i]) == expected
    s, r = exact_knn(x[:3], x[:3], 5, own=np.arange(3))  # fewer others than k: padded
    assert (r[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all()


def build(store_root, make_export, x, kind: str, name: str) -> ArtifactStore:
    store = ArtifactStore(store_root)
    store.build(make_export(x, name=name), IndexConfig(kind=kind, tune_queries=50))
    return store


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_a_version_with_adds_and_deletes_groups_as_an_exact_pass_whatever_the_index(vectors, make_export, tmp_path,
                                                                                       kind):
    """1,200 images (enough for an approximate index), deletes and adds made since the segment was built: the
    incremental graph equals one exact pass over the live images, removed images are in no group, added ones
    are; the same groups for every index kind."""
    d = 16
    x = with_copies(vectors, 1200, d, copies=100, noise=0.25, seed=1)
    store = build(tmp_path / "store", make_export, x, kind, f"export-{kind}")
    lv = store.load()
    segment = segment_knn(lv.searcher.vectors)
    rng = np.random.default_rng(2)
    removed = rng.choice(1200, 150, replace=False)
    removed = np.union1d(removed, segment[1][5, :12])  # row 5 loses 12 of its 16 listed neighbours: recomputed
    store.remove(removed, base=lv)
    extra = with_copies(vectors, 40, d, copies=0, noise=0, seed=3)
    extra[:20] = x[1100:1120] + 0.01 * rng.standard_normal((20, d)) / np.sqrt(d)  # near copies of segment images
    extra = (extra / np.linalg.norm(extra, axis=1, keepdims=True)).astype(np.float32)
    _, added = store.add(extra, [NewItem(f"new/{i}.png") for i in range(40)], base=store.current_version())
    lv = store.load()
    assert len(lv.searcher.delta.removed) == len(removed) and len(lv.searcher.delta.metadata) == 40

    patched = live_graph(lv.searcher, segment=segment)
    full = live_graph(lv.searcher)
    assert np.array_equal(patched.ids, full.ids)
    assert np.allclose(patched.scores, full.scores, atol=1e-6)
    assert np.array_equal(patched.rows, full.rows)

    live_x = np.concatenate([x[np.setdiff1d(np.arange(1200), removed)], extra])
    s, r = exact_knn(live_x, live_x, 10, own=np.arange(len(live_x)))
    assert np.array_equal(r, full.rows) and np.allclose(s, full.scores, atol=1e-6)

    groups = duplicate_groups(full, 0.95)
    members = np.concatenate([g.ids for g in groups])
    assert not np.isin(members, removed).any()
    assert np.isin(added[:20], members).sum() >= 10  # the added near copies of kept images are grouped
    assert len(groups) > 20


def test_groups_do_not_depend_on_the_index_kind(vectors, make_export, tmp_path):
    x = with_copies(vectors, 1100, 16, copies=80, noise=0.2, seed=5)
    answers = []
    for kind in ("flat", "hnsw", "ivf_flat"):
        lv = build(tmp_path / kind, make_export, x, kind, f"e-{kind}").load()
        answers.append(as_set(duplicate_groups(live_graph(lv.searcher), 0.9)))
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) > 10


def test_the_cli_prints_the_groups_of_the_current_version(vectors, make_export, tmp_path, capsys):
    from service.cli import main

    x = with_copies(vectors, 40, 8, copies=6, noise=0.05, seed=4)
    build(tmp_path / "store", make_export, x, "flat", "export")
    assert main(["duplicates", "--store", str(tmp_path / "store"), "--threshold", "0.95", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == "v000001" and out["threshold"] == 0.95 and out["threshold_source"] == "request"
    lv = ArtifactStore(tmp_path / "store").load()
    expected = as_set(duplicate_groups(live_graph(lv.searcher), 0.95))
    got = {tuple(sorted((m["id"], round(m["score"], 4)) for m in g["members"])) for g in out["groups"]}
    assert got == expected and out["total_groups"] == len(expected) >= 3
    assert all(m["path"].startswith("img/") for g in out["groups"] for m in g["members"])
    assert main(["duplicates", "--store", str(tmp_path / "store"), "--threshold", "0.95"]) == 0
    assert "group 1:" in capsys.readouterr().out
