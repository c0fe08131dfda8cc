"""Threads searching while new versions are published (and old ones pruned) never see an error or a
version whose index, metadata and vectors disagree."""

import threading
import time

import numpy as np

from index import ArtifactStore

D = 16
N = 400
READERS = 4
PUBLISHES = 16


def check_consistent(lv, queries):
    """Every hit belongs to this version, and exact search agrees with brute force over its own vectors."""
    prefix = "a" if lv.manifest["origin"]["export"].endswith("export_a") else "b"
    scores, ids = lv.searcher.search_arrays(queries, 5)
    assert all(lv.searcher.metadata.get(int(i)).path.startswith(f"{prefix}/") for i in ids.ravel())
    rows = np.asarray(lv.searcher.vectors) @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T  # N x Q
    np.testing.assert_array_equal(ids[:, 0], lv.searcher.metadata.ids[rows.argmax(0)])
    hits = lv.searcher.search(queries, 5)
    assert all(h.item.path.startswith(f"{prefix}/") and h.item.id == h.id for row in hits for h in row)
    return prefix


def test_readers_during_publishes(tmp_path, make_export, vectors):
    exports = {
        "a": make_export(vectors.random(N, D, seed=1), name="export_a", prefix="a"),
        "b": make_export(vectors.random(N, D, seed=2), name="export_b", prefix="b"),
    }
    store = ArtifactStore(tmp_path / "store", keep=2)  # aggressive pruning: versions vanish under readers
    store.build(exports["a"])
    held = store.load()  # one reader keeps an old version across every publish (the service's live version)
    errors, seen, searches = [], set(), [0] * READERS
    done = threading.Event()

    def reader(slot: int):
        rng = np.random.default_rng(slot)
        try:
            while not done.is_set():
                queries = rng.standard_normal((3, D)).astype(np.float32)
                lv = ArtifactStore(tmp_path / "store", keep=2).load()  # fresh load of whatever is current
                seen.add(check_consistent(lv, queries))
                check_consistent(held, queries)
                searches[slot] += 1
        except Exception as e:  # collected and reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    try:
        for i in range(PUBLISHES):
            store.build(exports["ab"[(i + 1) % 2]])
            time.sleep(0.01)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert seen == {"a", "b"} and min(searches) > 0
    assert len(store.versions()) == 2
