"""O(delta) versions: an add or delete hard-links the base segment and writes only the delta; loading it next to
the live version reuses the segment; search over segment + delta equals brute force; compaction folds it."""

import numpy as np

from index import ArtifactStore, IndexConfig, NewItem
from index.content import SEGMENT_FILES

D = 16


def brute_force(lv, queries, k):
    """Reference: every live item's vector against the queries, top-k by score."""
    ids = np.array([it.id for it in lv.searcher.metadata])
    x = np.stack([lv.searcher.vector(int(i)) for i in ids])  # N x D
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ x.T  # Q x N
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def updated_version(store, make_export, vectors, n):
    """A version of n vectors, then 40 added, then every 7th segment id and one added id removed."""
    base = store.build(make_export(vectors.random(n, D, seed=1)), IndexConfig(kind="flat"))
    added, ids = store.add(vectors.random(40, D, seed=2), [NewItem(f"up/{i}.png") for i in range(40)], base=base)
    gone = [*range(0, n, 7), int(ids[3])]
    store.remove(gone, base=added)
    return store.load(), gone


def test_exact_search_over_segment_and_delta_equals_brute_force(tmp_path, make_export, vectors):
    lv, gone = updated_version(ArtifactStore(tmp_path / "store"), make_export, vectors, 300)
    assert lv.searcher.ntotal == 300 + 40 - len(gone)
    queries = vectors.random(25, D, seed=3)
    for k in (1, 10, 400):  # 400: more than the collection, padded with -1
        scores, found = lv.searcher.search_arrays(queries, k)
        want_scores, want_ids = brute_force(lv, queries, min(k, lv.searcher.ntotal))
        np.testing.assert_array_equal(found[:, :want_ids.shape[1]], want_ids)
        np.testing.assert_allclose(scores[:, :want_scores.shape[1]], want_scores, atol=1e-5)
        assert (found[:, lv.searcher.ntotal:] == -1).all()


def test_update_links_the_segment_and_loads_in_o_delta(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    base = store.build(make_export(vectors.random(500, D, seed=1)))
    live = store.load()
    version, (new,) = store.add(vectors.random(1, D, seed=2), [NewItem("up/a.png")], base=live)
    old_dir, new_dir = store.directory(base), store.directory(version)
    for name in (*SEGMENT_FILES, "model.pt"):  # hard links: nothing of the collection is rewritten
        assert (old_dir / name).stat().st_ino == (new_dir / name).stat().st_ino
    assert store.manifest(version)["files"]["index.faiss"] == store.manifest(base)["files"]["index.faiss"]
    (old_dir / "index.faiss").chmod(0o000)  # the derived load must not even open the shared segment files
    try:
        derived = store.load(version, reuse=live)
    finally:
        (old_dir / "index.faiss").chmod(0o644)
    assert derived.searcher.index is live.searcher.index and derived.searcher.prefilter is live.searcher.prefilter
    assert derived.searcher.search(vectors.random(1, D, seed=2), 1)[0][0].id == new
    fresh = store.load(version)  # the same version loaded from scratch answers the same
    q = vectors.random(8, D, seed=5)
    np.testing.assert_array_equal(fresh.searcher.search_arrays(q, 5)[1], derived.searcher.search_arrays(q, 5)[1])


def test_compaction_folds_the_delta_keeping_ids_and_answers(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    base = store.build(make_export(vectors.random(200, D, seed=1)))
    added, ids = store.add(vectors.random(30, D, seed=2), [NewItem(f"up/{i}.png") for i in range(30)], base=base)
    removed = store.remove([5, 6, int(ids[0])], base=added)
    before = store.load()
    compacted = store.compact(removed)
    after = store.load()
    assert after.version == compacted and after.searcher.delta.size == 0 and len(after.searcher.segment) == 227
    assert store.manifest(compacted)["origin"]["kind"] == "compact"
    q = vectors.random(10, D, seed=4)
    np.testing.assert_array_equal(after.searcher.search_arrays(q, 10)[1], before.searcher.search_arrays(q, 10)[1])
    assert after.tombstones == before.tombstones
    assert store.compact(compacted) is None  # nothing to fold
    stale, (z,) = store.add(vectors.random(1, D, seed=9), [NewItem("up/z.png")], base=compacted)
    meanwhile, (w,) = store.add(vectors.random(1, D, seed=8), [NewItem("up/w.png")], base=stale)
    store.remove([7, z], base=meanwhile)  # adds and deletes published while a compaction of `stale` runs
    live = store.load()
    carried = store.load(store.compact(stale))  # they are carried onto the new segment as its delta
    assert z in carried.searcher.segment and list(carried.searcher.delta.metadata.ids) == [w]
    assert list(carried.searcher.delta.removed) == [7, z] and carried.tombstones == live.tombstones
    assert sorted(carried.searcher.metadata.ids) == sorted(live.searcher.metadata.ids)
    np.testing.assert_array_equal(carried.searcher.search_arrays(q, 10)[1], live.searcher.search_arrays(q, 10)[1])
    assert carried.manifest["counts"]["vectors"] == len(live.searcher.metadata)
    store.build(make_export(vectors.random(50, D, seed=6), name="retrained"))
    assert store.compact(carried.version) is None  # a retrain replaced the segment: nothing to fold into
