"""The artifact store: versions from exports, manifests, listing, publish / rollback / pruning, add / remove."""

import json

import numpy as np
import pytest

from durable import sha256_file
from index import (
    ArtifactStore,
    DimensionMismatchError,
    EmptyCollectionError,
    ExportError,
    IndexConfig,
    IndexStoreError,
    NewItem,
    VersionConflictError,
    VersionNotFoundError,
)
from index.content import DATA_FILES

D = 16


@pytest.fixture
def export(make_export, vectors):
    return make_export(vectors.random(300, D, seed=5), labels=[f"c{i % 3}" for i in range(300)])


def test_build_publishes_a_complete_version(tmp_path, export):
    store = ArtifactStore(tmp_path / "store")
    assert store.current_version() is None and store.versions() == []
    version = store.build(export)
    assert version == "v000001" and store.current_version() == version
    directory = store.directory(version)
    assert sorted(p.name for p in directory.iterdir()) == sorted([*DATA_FILES, "manifest.json"])
    m = store.verify(version)
    assert m["version"] == version and m["parent"] is None
    assert m["counts"] == {"vectors": 300, "dim": D, "next_id": 300, "labelled": 300, "delta": 0}
    assert m["index"]["spec"]["kind"] == "flat" and m["index"]["tuning"]["recall"] == 1.0
    assert m["training"]["metrics"] == {"knn_top1": 0.5, "loss": 7.25}
    assert m["training"]["config"]["epochs"] == 3
    assert {"python", "numpy", "faiss-cpu"} <= set(m["libraries"])
    for name in DATA_FILES:
        assert m["files"][name]["sha256"] == sha256_file(directory / name)
    for name in ("model.pt", "preprocess.json"):  # copied as exported
        assert sha256_file(directory / name) == sha256_file(export / name)


def test_loaded_version_searches_with_metadata(tmp_path, export):
    store = ArtifactStore(tmp_path / "store")
    store.build(export)
    lv = store.load()
    x = np.load(export / "embeddings.npy")
    hit = lv.searcher.search(x[7], k=1)[0][0]
    assert hit.id == 7 and hit.item.path == "img/000007.png" and hit.item.label == "c1"
    assert hit.item.width is None and hit.item.sha256 is None  # no collection root: no files to describe
    assert lv.searcher.ntotal == 300 and lv.dim == D


def test_metadata_describes_files_under_the_collection_root(tmp_path, make_export, vectors):
    from PIL import Image

    root = tmp_path / "photos"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "img" / "000001.png")
    export = make_export(vectors.random(3, D), collection_root=str(root))
    store = ArtifactStore(tmp_path / "store")
    store.build(export)
    meta = store.load().searcher.metadata
    item = meta.get(1)
    assert (item.width, item.height) == (40, 30)
    assert item.sha256 == sha256_file(root / "img" / "000001.png")
    assert meta.get(0).sha256 is None  # missing file: left empty, not an error
    assert store.manifest(store.current_version())["collection_root"] == str(root)


def test_list_publish_rollback_and_pruning(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store", keep=3)
    exports = [make_export(vectors.random(20 + i, D, seed=i), name=f"e{i}") for i in range(5)]
    built = [store.build(e) for e in exports[:3]]
    assert built == ["v000001", "v000002", "v000003"]
    infos = store.list()
    assert [i.version for i in infos] == built and [i.current for i in infos] == [False, False, True]
    assert infos[0].manifest["counts"]["vectors"] == 20
    assert store.rollback() == "v000002" and store.current_version() == "v000002"
    assert store.rollback() == "v000001"
    with pytest.raises(IndexStoreError, match="roll back"):
        store.rollback()
    store.publish("v000003")
    assert store.rollback() == "v000001"  # rollback returns to what was live before, not to the next-newest
    store.publish("v000003")
    store.build(exports[3])
    store.build(exports[4])  # keep=3: v000001 and v000002 go
    assert store.versions() == ["v000003", "v000004", "v000005"]
    assert store.rollback() == "v000004"
    with pytest.raises(VersionNotFoundError):
        store.load("v000001")
    with pytest.raises(VersionNotFoundError):
        store.publish("v000042")


def test_staged_version_is_not_current(tmp_path, export):
    store = ArtifactStore(tmp_path / "store")
    first = store.build(export)
    staged = store.build(export, publish=False)
    assert store.current_version() == first
    store.publish(staged)
    assert store.current_version() == staged
    assert store.manifest(staged)["parent"] == first


def test_add_and_remove_persist_as_new_versions(tmp_path, export, vectors):
    store = ArtifactStore(tmp_path / "store")
    base = store.build(export)
    new = vectors.random(4, D, seed=99)
    items = [NewItem(f"up/{i}.jpg", "c9", 10, 20, f"{i:064x}") for i in range(3)] + [{"path": "up/3.jpg"}]
    version, ids = store.add(new, items, base=base)
    assert list(ids) == [300, 301, 302, 303]
    version2 = store.remove([5, 301], base=version)

    reopened = ArtifactStore(tmp_path / "store")  # a restart sees both updates
    assert reopened.current_version() == version2
    lv = reopened.load()
    assert lv.searcher.ntotal == 302
    top = [h[0].id for h in lv.searcher.search(new, k=1)]
    assert (top[0], top[2], top[3]) == (300, 302, 303) and top[1] != 301  # exact search finds what was added
    assert 301 not in lv.searcher.metadata and 5 not in lv.searcher.metadata
    assert lv.searcher.metadata.get(300).label == "c9" and lv.searcher.metadata.get(303).path == "up/3.jpg"
    all_ids = lv.searcher.search_arrays(np.load(export / "embeddings.npy")[5], k=302)[1][0]
    assert 5 not in all_ids and 301 not in all_ids and len(set(all_ids)) == 302
    m = lv.manifest
    assert m["origin"] == {"kind": "remove", "base": version, "ids": 2}
    assert m["counts"]["next_id"] == 304  # removed ids are never reused
    version3, ids3 = reopened.add(new[:1], [NewItem("up/again.jpg")], base=version2)
    assert list(ids3) == [304]
    assert reopened.rollback() == version2  # an update is rolled back like any version


def test_remove_from_hnsw_filters_then_compaction_rebuilds_the_graph(tmp_path, make_export, vectors):
    x = vectors.random(1500, D, seed=8)
    store = ArtifactStore(tmp_path / "store")
    base = store.build(make_export(x), IndexConfig(kind="hnsw", tune_queries=100))
    version = store.remove(np.arange(0, 1500, 3), base=base)
    for lv in (store.load(version), store.load(store.compact(version))):  # removed ids filtered, then folded
        assert lv.searcher.ntotal == 1000 and lv.manifest["index"]["spec"]["kind"] == "hnsw"
        found = lv.searcher.search_arrays(x[:30], 10)[1]
        assert not np.isin(found, np.arange(0, 1500, 3)).any()
        assert (found[1::3, 0] == np.arange(1, 30, 3)).all()  # kept items still find themselves
        assert lv.manifest["index"]["recall_measured_on"] == base
    assert lv.searcher.index.ntotal == 1000  # the compacted graph holds only the kept vectors


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat"])
def test_approximate_versions_return_k_up_to_1000(tmp_path, make_export, vectors, kind):
    x = vectors.random(3000, D, seed=9)
    store = ArtifactStore(tmp_path / "store")
    store.build(make_export(x), IndexConfig(kind=kind, tune_queries=100))
    lv = store.load()
    assert lv.manifest["index"]["tuning"]["queries"] == 100
    hits = lv.searcher.search(x[:2], k=1000)
    assert [len(h) for h in hits] == [1000, 1000] and [h[0].id for h in hits] == [0, 1]


def test_update_errors(tmp_path, export, vectors):
    store = ArtifactStore(tmp_path / "store")
    base = store.build(export)
    with pytest.raises(DimensionMismatchError):
        store.add(vectors.random(1, D + 1), [NewItem("x.jpg")], base=base)
    with pytest.raises(ValueError, match="items"):
        store.add(vectors.random(2, D), [NewItem("x.jpg")], base=base)
    with pytest.raises(IndexStoreError, match="not in this version"):
        store.remove([12345], base=base)
    with pytest.raises(EmptyCollectionError):
        store.remove(range(300), base=base)
    newer = store.build(export)
    with pytest.raises(VersionConflictError):
        store.add(vectors.random(1, D), [NewItem("x.jpg")], base=base)  # base is no longer current
    staged, _ = store.add(vectors.random(1, D), [NewItem("x.jpg")], base=base, publish=False)
    assert store.current_version() == newer and store.manifest(staged)["parent"] == newer
    assert store.versions() == [base, newer, staged]


def test_export_errors(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(EmptyCollectionError):
        store.build(make_export(np.zeros((0, D), np.float32), name="empty"))
    with pytest.raises(ExportError, match="not found"):
        store.build(tmp_path / "nowhere")
    bad = make_export(vectors.random(10, D), name="bad")
    (bad / "model.pt").unlink()
    with pytest.raises(ExportError, match="model.pt"):
        store.build(bad)
    unnormalised = make_export(2 * vectors.random(10, D), name="norm")
    with pytest.raises(ExportError, match="normalised"):
        store.build(unnormalised)
    meta_wrong = make_export(vectors.random(10, D), name="dim")
    meta = json.loads((meta_wrong / "export.json").read_text())
    (meta_wrong / "export.json").write_text(json.dumps({**meta, "dim": D + 1}))
    with pytest.raises(ExportError, match="dim"):
        store.build(meta_wrong)
    assert store.versions() == [] and store.current_version() is None
