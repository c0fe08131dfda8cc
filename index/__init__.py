"""Versioned FAISS artifacts: build from a trainer export, publish atomically, search, add, roll back.

A version is one immutable directory: the encoder and its preprocessing (model.pt, preprocess.json, as
exported by the trainer), the FAISS index, the embeddings, an id -> metadata table and a sealed manifest
with a checksum of every file. The store keeps the last `keep` versions and a CURRENT pointer.

API for the service
-------------------
    from index import ArtifactStore, IndexConfig, NewItem

    store = ArtifactStore(root, keep=5)
    store.current_version() -> str | None          # reads one small file: poll it to hot-swap
    lv = store.load(version=None, verify=True, gpu=False) -> LoadedVersion
        lv.version, lv.manifest                     # manifest: counts, index kind/setting/recall, metrics...
        lv.directory                                # model.pt + preprocess.json: Embedder.from_dir(lv.directory)
        lv.searcher.search(queries BxD, k=10, min_score=None) -> list (per query) of list[Hit]
            Hit(id, score, item: ItemMeta(id, path, label, width, height, sha256, added))
        lv.searcher.search_arrays(queries, k) -> (scores BxK, ids BxK)   # -inf / -1 padded
        lv.searcher.vector(id) -> D                 # stored embedding (search by id)
        lv.searcher.metadata: LiveItems             # get(id), id in, len, find_path(path), find_sha(sha256)
        lv.tombstones                               # {path: retired id} of deleted images
    store.load(version, reuse=lv) -> LoadedVersion  # O(delta) when version shares lv's segment (adds, deletes)
    store.build(export_dir, IndexConfig(...), publish=True) -> version   # ids from the registry (registry.py)
    store.publish_rebased(version, carry_from, embed) -> version   # rebase onto what was published meanwhile
    store.add(vectors MxD, [NewItem(path, label, width, height, sha256) or dict], base=lv or lv.version)
        -> (version, ids M)                         # VersionConflictError if base is no longer current
    store.remove(ids, base=lv or lv.version, tombstone=True) -> version   # paths tombstoned (unless False: files
                                                    # gone from the folder); EmptyCollectionError for the last
    store.replace(ids, [NewItem], base=lv, vectors=None) -> version   # same ids, new rows: vectors None = moved
                                                    # or renamed (stored embedding kept), MxD = bytes replaced
    store.compact(version) -> version | None        # fold the delta into a new segment (O(collection))
    store.rollback(to=None, embed=None) -> version  # with to + embed: carries the adds and deletes made since
    store.publish(version); store.list() -> [VersionInfo(kind "model"|"update")]; store.verify(version)
    store.next_id()                                 # ids handed out from now on are >= this
    NewItem.from_file(file, path, label)            # size and sha256 of an uploaded image

Semantics
---------
- Scores are cosine similarities: queries are L2-normalised, collection vectors are unit rows.
- A LoadedVersion never changes: add/remove/replace/build write a new version and move CURRENT. To hot-swap,
  poll `current_version()`, `load()` the new one, then replace your reference in one assignment; keep
  serving the old one meanwhile. `load()` retries when the version it read is pruned while loading.
- Searchers are safe for concurrent threads (GPU indexes are guarded by a lock). k is 1..1000.
- Writers (build/add/remove/replace/publish/rollback) serialise on a file lock; a crash at any point leaves the
  previous current version whole and loadable. Loading a damaged version raises DamagedVersionError.
- Errors: IndexStoreError and its subclasses VersionNotFoundError, DamagedVersionError,
  DimensionMismatchError, EmptyCollectionError, ExportError, VersionConflictError; messages are meant
  for users. Library code logs through `logging`, it never prints.
- Ids are stable (registry.py): a path keeps its id across builds, a moved file keeps it by content (`replace`
  keeps it between builds), deleted paths are tombstoned, ids are never reused (NEXT_ID high-water mark at the
  store root).
- Adds and removes cost O(delta) (delta.py): the base segment is hard-linked, only the delta is written, and
  `load(reuse=...)` reads only the delta; `compact` folds it back, off the request path. The index kind and
  its tuned setting are kept; the recall in the manifest is the one measured on `recall_measured_on`.
- Retention: the newest `keep` model versions (builds) and, apart from them, the newest `keep` update versions
  (add, remove, compact) are kept, never the current one.
- Threads: FAISS uses OpenMP inside each search. A server answering many single queries at once may
  prefer `faiss.omp_set_num_threads(1)` (docs/index-benchmark.md).

Near duplicates (index/duplicates.py): `live_graph(searcher)` (exact k-NN over the stored embeddings, any index
kind) -> `duplicate_groups(graph, threshold)` (connected components, largest first); `npid duplicates`.

CLI: `npid index build|list|publish|rollback|search|stats` and `npid duplicates` (index/cli.py).
"""

from .artifact import ArtifactStore, Embed, LoadedVersion, VersionInfo
from .config import IndexConfig
from .errors import (
    DamagedVersionError,
    DimensionMismatchError,
    EmptyCollectionError,
    ExportError,
    IndexStoreError,
    VersionConflictError,
    VersionNotFoundError,
)
from .manifest import ListedKind, OriginKind, VersionKind, version_kind
from .metadata import ItemMeta, NewItem, display_path
from .search import MAX_K, Hit, Searcher

__all__ = [
    "MAX_K",
    "ArtifactStore",
    "Embed",
    "DamagedVersionError",
    "DimensionMismatchError",
    "EmptyCollectionError",
    "ExportError",
    "Hit",
    "IndexConfig",
    "IndexStoreError",
    "ItemMeta",
    "LoadedVersion",
    "NewItem",
    "Searcher",
    "VersionConflictError",
    "VersionInfo",
    "VersionNotFoundError",
    "display_path",
    "version_kind",
    "ListedKind",
    "OriginKind",
    "VersionKind",
]
