"""Stable ids: the registry keeps an image's id across rebuilds, adds, deletes, renames and rollbacks, never
reuses one, and a publish rebases onto what was published meanwhile."""

import json
import shutil

import numpy as np
import pytest

from index import ArtifactStore, EmptyCollectionError, IndexStoreError, NewItem

D = 16


def ids_by_path(store, version=None) -> dict[str, int]:
    return {it.path: it.id for it in store.load(version).searcher.metadata}


def test_rebuild_keeps_ids_by_path_and_new_paths_get_new_ids(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    first = store.build(make_export(vectors.random(50, D, seed=1), name="a"))
    before = ids_by_path(store)
    # a retrain whose export ranks paths differently (ids.npy = row numbers) and holds 10 new images
    grown = make_export(vectors.random(60, D, seed=2), name="b", ids=np.arange(60)[::-1].copy())
    store.build(grown)
    after = ids_by_path(store)
    assert {p: after[p] for p in before} == before
    assert sorted(i for p, i in after.items() if p not in before) == list(range(50, 60))
    assert store.manifest(store.current_version())["registry_base"] == first


def test_deleted_ids_are_never_reused_and_stay_deleted_on_rebuild(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store", keep=10)
    export = make_export(vectors.random(30, D, seed=1))
    first = store.build(export)
    added, (new_id,) = store.add(vectors.random(1, D, seed=9), [NewItem("up/a.png")], base=first)
    gone = store.remove([3, new_id], base=added)
    tombstoned = store.load().tombstones
    assert tombstoned == {"img/000003.png": 3, "up/a.png": new_id}
    rebuilt = store.build(export)  # the export still lists img/000003.png: the tombstone keeps it out
    lv = store.load(rebuilt)
    assert 3 not in lv.searcher.metadata and len(lv.searcher.metadata) == 29 and lv.tombstones == tombstoned
    store.publish(first)  # back to a version from before the add: its next_id is 30, the store's is 31
    _, (again,) = store.add(vectors.random(1, D, seed=10), [NewItem("up/b.png")], base=first)
    assert again == new_id + 1
    _, (readded,) = store.add(vectors.random(1, D, seed=11), [NewItem("up/a.png")], base=store.current_version())
    assert readded > again and "up/a.png" not in store.load().tombstones  # an explicit add lifts the tombstone
    assert gone in store.versions()


def test_renamed_file_keeps_its_id_and_a_copy_is_new(tmp_path, image_export):
    root, export = image_export
    photos = shutil.copytree(root, tmp_path / "photos")
    store = ArtifactStore(tmp_path / "store")
    store.build(export, collection_root=photos)
    before = ids_by_path(store)
    (photos / "cat" / "00.png").rename(photos / "dog" / "renamed.png")
    shutil.copy(photos / "cat" / "01.png", photos / "ship" / "copy.png")
    moved = shutil.copytree(export, tmp_path / "moved")
    rows = [json.loads(line) for line in (moved / "items.jsonl").read_text().splitlines()]
    rows[0]["path"] = "dog/renamed.png"
    rows.append({"id": len(rows), "path": "ship/copy.png", "label": "ship"})
    (moved / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    embeddings = np.load(moved / "embeddings.npy")
    np.save(moved / "embeddings.npy", np.concatenate([embeddings, embeddings[1:2]]))
    np.save(moved / "ids.npy", np.arange(len(rows)))
    store.build(moved, collection_root=photos)
    after = ids_by_path(store)
    assert after["dog/renamed.png"] == before["cat/00.png"] and "cat/00.png" not in after
    assert after["cat/01.png"] == before["cat/01.png"] and after["ship/copy.png"] == max(before.values()) + 1


def test_publish_rebases_adds_and_deletes_made_meanwhile(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    first = store.build(make_export(vectors.random(40, D, seed=1), name="a"))
    carry_from = store.next_id()  # a job begins
    staged = store.build(make_export(vectors.random(40, D, seed=2), name="b"), publish=False)
    uploaded = vectors.random(2, D, seed=3)
    during, new_ids = store.add(uploaded, [NewItem("up/x.png"), NewItem("up/y.png")], base=first)
    store.remove([7, int(new_ids[1])], base=during)
    retrained = {int(i): v for i, v in zip(new_ids, vectors.random(2, D, seed=4), strict=True)}  # new model

    def embed(model_dir, items):
        assert model_dir == store.directory(staged)  # carried images are embedded with the job's model
        return np.stack([retrained[it.id] for it in items]), items

    published = store.publish_rebased(staged, carry_from, embed)
    lv = store.load()
    assert lv.version == published != staged and staged not in store.versions()  # the unserved build is dropped
    assert int(new_ids[0]) in lv.searcher.metadata and lv.searcher.metadata.get(int(new_ids[0])).path == "up/x.png"
    assert 7 not in lv.searcher.metadata and int(new_ids[1]) not in lv.searcher.metadata
    np.testing.assert_allclose(lv.searcher.vector(int(new_ids[0])), retrained[int(new_ids[0])], atol=1e-6)
    assert len(lv.searcher.metadata) == 40 - 1 + 1
    origin = store.manifest(published)["origin"]
    assert origin["kind"] == "build" and origin["rebased"] == {"from": staged, "onto": store.manifest(published)[
        "parent"], "carried": 1, "removed": 1}


def test_publish_without_changes_meanwhile_publishes_the_version_itself(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    store.build(make_export(vectors.random(20, D, seed=1), name="a"))
    staged = store.build(make_export(vectors.random(20, D, seed=2), name="b"), publish=False)
    assert store.publish_rebased(staged, store.next_id(), embed=None) == staged == store.current_version()


def test_retention_counts_model_versions_apart_and_rollback_carries_adds(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store", keep=2)
    models = [store.build(make_export(vectors.random(20, D, seed=s), name=f"m{s}")) for s in (1, 2)]
    added = {}
    for i in range(7):  # more adds than keep: the model versions survive them
        _, (new,) = store.add(vectors.random(1, D, seed=10 + i), [NewItem(f"up/{i}.png")],
                              base=store.current_version())
        added[new] = f"up/{i}.png"
    store.remove([4], base=store.current_version())
    kinds = [(i.version, i.kind) for i in store.list()]
    assert [v for v, k in kinds if k == "model"] == models and sum(k == "update" for _, k in kinds) == 2

    def embed(model_dir, items):
        assert model_dir == store.directory(models[0])
        return vectors.random(len(items), D, seed=99), items

    old_model = store.manifest(models[0])["files"]["model.pt"]
    rolled = store.rollback(to=models[0], embed=embed)  # a new model version: keep=2 now prunes models[0] itself
    lv = store.load()
    assert lv.version == rolled and lv.manifest["files"]["model.pt"] == old_model
    assert {i: lv.searcher.metadata.get(i).path for i in added} == added and 4 not in lv.searcher.metadata
    assert len(lv.searcher.metadata) == 20 - 1 + 7


def test_remove_refuses_unknown_ids_and_an_empty_collection(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    base = store.build(make_export(vectors.random(2, D, seed=1)))
    with pytest.raises(IndexStoreError, match="not in this version"):
        store.remove([99], base=base)
    one = store.remove([0], base=base)
    with pytest.raises(EmptyCollectionError):
        store.remove([1], base=one)


def test_an_upload_racing_the_snapshot_keeps_the_id_its_client_got(tmp_path, make_export, vectors):
    """The job's scan saw an upload's file, but its add was published after the job's registry snapshot: the
    path has two ids; the one the API answered wins."""
    store = ArtifactStore(tmp_path / "store")
    first = store.build(make_export(vectors.random(20, D, seed=1), name="a"))
    carry_from = store.next_id()
    scanned = make_export(vectors.random(21, D, seed=2), name="b", prefix="img")
    rows = (scanned / "items.jsonl").read_text().splitlines()
    rows[-1] = json.dumps({"id": 20, "path": "up/x.png", "label": None})
    (scanned / "items.jsonl").write_text("\n".join(rows) + "\n")
    staged = store.build(scanned, publish=False)
    snapshot_id = store.load(staged).searcher.metadata.find_path("up/x.png").id
    _, (api_id,) = store.add(vectors.random(1, D, seed=3), [NewItem("up/x.png")], base=first)
    assert api_id != snapshot_id
    store.publish_rebased(staged, carry_from, lambda model_dir, items: (vectors.random(len(items), D), items))
    live = store.load().searcher.metadata
    assert live.find_path("up/x.png").id == api_id and snapshot_id not in live and len(live) == 21


def test_move_and_replace_keep_the_id_in_one_o_delta_version(tmp_path, make_export, vectors):
    """A file renamed or moved (`replace` without vectors: the stored embedding is kept) or replaced in place by
    other bytes (with vectors) keeps its id and when it was added; the old path no longer finds it; search, a
    reload from scratch and a compaction run meanwhile all agree."""
    store = ArtifactStore(tmp_path / "store", keep=20)
    base = store.build(make_export(vectors.random(30, D, seed=1), name="a"))
    added, (new_id,) = store.add(vectors.random(1, D, seed=2), [NewItem("up/a.png", sha256="a" * 64)], base=base)
    live = store.load()
    was = {i: live.searcher.metadata.get(i) for i in (4, new_id)}
    stored = live.searcher.vector(4)
    moved = store.replace([4, new_id], [NewItem("dog/four.png", "dog", 8, 8, "4" * 64), NewItem("up/b.png")],
                          base=live)
    lv = store.load(moved, reuse=live)
    assert lv.manifest["origin"] == {"kind": "move", "base": added, "ids": 2}
    items = lv.searcher.metadata
    assert items.find_path("dog/four.png").id == 4 and items.find_path("img/000004.png") is None
    assert items.find_path("up/b.png").id == new_id and items.find_path("up/a.png") is None
    assert items.get(4).added == was[4].added and items.find_sha("4" * 64).id == 4
    assert len(items) == 31 and lv.manifest["counts"]["next_id"] == 31  # no id handed out
    np.testing.assert_array_equal(lv.searcher.vector(4), stored)  # a move keeps the embedding
    assert lv.searcher.search(stored[None], 1)[0][0].id == 4

    fresh = vectors.random(1, D, seed=3)
    replaced = store.replace([4], [NewItem("dog/four.png", "dog", 8, 8, "5" * 64)], base=lv, vectors=fresh)
    lv2 = store.load(replaced, reuse=lv)
    assert lv2.manifest["origin"]["kind"] == "replace" and lv2.searcher.search(fresh, 1)[0][0].id == 4
    assert lv2.searcher.metadata.find_sha("4" * 64) is None and lv2.searcher.metadata.find_sha("5" * 64).id == 4
    scores, found = lv2.searcher.search_arrays(stored[None], 31)
    assert sorted(found[0]) == sorted(lv2.searcher.metadata.ids) and len(set(found[0])) == 31  # no id twice
    q = vectors.random(6, D, seed=4)
    np.testing.assert_array_equal(store.load(replaced).searcher.search_arrays(q, 10)[1],
                                  lv2.searcher.search_arrays(q, 10)[1])

    with pytest.raises(IndexStoreError, match="held by image"):  # a path names one image
        store.replace([5], [NewItem("dog/four.png")], base=replaced)
    with pytest.raises(IndexStoreError, match="not in this version"):
        store.replace([99], [NewItem("x.png")], base=replaced)

    # moved and replaced again while a compaction of `replaced` runs: carried onto the new segment
    again = store.replace([4], [NewItem("cat/four.png", "cat")], base=replaced)
    gone = store.remove([7], base=again, tombstone=False)  # a file gone from the folder: no tombstone
    now = store.load(gone)
    assert "img/000007.png" not in now.tombstones and 7 not in now.searcher.metadata
    compacted = store.load(store.compact(replaced))
    assert compacted.searcher.metadata.find_path("cat/four.png").id == 4
    assert compacted.searcher.metadata.find_path("dog/four.png") is None and 7 not in compacted.searcher.metadata
    np.testing.assert_array_equal(compacted.searcher.search_arrays(q, 10)[1], now.searcher.search_arrays(q, 10)[1])
    np.testing.assert_array_equal(compacted.searcher.vector(4), now.searcher.vector(4))
    folded = store.load(store.compact(compacted.version))  # and once folded, the segment holds the new row
    assert folded.searcher.delta.size == 0 and folded.searcher.metadata.get(4).path == "cat/four.png"
    np.testing.assert_allclose(folded.searcher.vector(4), fresh[0], atol=1e-6)
