"""Damaged versions are refused on load with a clear error; the store keeps working around them."""

import pytest

from index import ArtifactStore, DamagedVersionError, IndexStoreError, NewItem
from index.content import DATA_FILES, INDEX_FILE

D = 16


@pytest.fixture
def store(tmp_path, make_export, vectors):
    store = ArtifactStore(tmp_path / "store")
    store.build(make_export(vectors.random(200, D, seed=1), name="a"))
    store.build(make_export(vectors.random(200, D, seed=2), name="b"))
    return store


@pytest.fixture
def updated_store(store, vectors):
    """The store plus a version made by an add and a remove: every file of it has content (delta, tombstones)."""
    version, _ = store.add(vectors.random(2, D, seed=3), [NewItem("up/1.png"), NewItem("up/2.png")],
                           base=store.current_version())
    store.remove([0], base=version)
    return store


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [*DATA_FILES, "manifest.json"])
def test_flipped_bit_is_detected(updated_store, name):
    store = updated_store
    version = store.current_version()
    flip_byte(store.directory(version) / name)
    with pytest.raises(DamagedVersionError, match=name.replace(".", r"\.")):
        store.load()
    with pytest.raises(DamagedVersionError):
        store.verify(version)


def test_truncated_and_missing_files_are_detected(store):
    version = store.current_version()
    directory = store.directory(version)
    (directory / "metadata.jsonl").write_bytes((directory / "metadata.jsonl").read_bytes()[:-10])
    with pytest.raises(DamagedVersionError, match="bytes"):
        store.load(version)
    (directory / INDEX_FILE).unlink()
    with pytest.raises(DamagedVersionError, match="missing"):
        store.load(version)


def test_unverified_load_still_refuses_an_unreadable_index(store):
    version = store.current_version()
    (store.directory(version) / INDEX_FILE).write_bytes(b"not a faiss index")
    with pytest.raises(DamagedVersionError, match="unreadable"):
        store.load(version, verify=False)


def test_store_works_around_a_damaged_version(store):
    first, second = store.versions()
    flip_byte(store.directory(first) / "embeddings.npy", offset=-1)
    with pytest.raises(DamagedVersionError):
        store.publish(first)  # never made current
    assert store.current_version() == second
    with pytest.raises(IndexStoreError, match="roll back"):
        store.rollback()  # the only earlier version is damaged: skipped
    assert store.current_version() == second and store.load().version == second
    (store.directory(first) / "manifest.json").write_text("{")
    infos = store.list()  # a damaged manifest is reported, not fatal
    assert infos[0].manifest is None and "manifest.json" in infos[0].problem
    assert infos[1].manifest is not None and infos[1].current


def test_damaged_pointer_is_reported_and_repaired_by_a_publish(store):
    first, second = store.versions()
    (store.root / "CURRENT").write_text("v0000")
    with pytest.raises(DamagedVersionError, match="pointer"):
        store.current_version()
    with pytest.raises(DamagedVersionError, match="pointer"):
        store.load()
    assert [i.current for i in store.list()] == [False, False]
    store.publish(first)
    assert store.current_version() == first and store.load().version == first
