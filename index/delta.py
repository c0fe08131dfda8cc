"""A version's changes since its base segment: items added (searched exactly) and ids removed (filtered out).

Adds and deletes cost O(delta), not O(collection): a version made by an add or a delete hard-links its base
segment (index.faiss, embeddings.npy, metadata.jsonl) from the version it derives from and writes only the
delta files below; a server already holding that segment loads just these. `ArtifactStore.compact` folds a
delta that has grown into a new base segment, in the background.

    delta.npy       float32 [M, D] unit rows of the items added since the segment was built
    delta.jsonl     one ItemMeta per row of delta.npy
    removed.npy     int64 [R], sorted: ids of the segment's items that are no longer in the collection
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EmptyCollectionError, IndexStoreError
from .metadata import ItemMeta, Metadata

DELTA_VECTORS = "delta.npy"
DELTA_ITEMS = "delta.jsonl"
REMOVED_FILE = "removed.npy"
DELTA_FILES = (DELTA_VECTORS, DELTA_ITEMS, REMOVED_FILE)


@dataclass(frozen=True)
class Delta:
    vectors: np.ndarray  # M x D float32 unit rows, row i is metadata.items[i]
    metadata: Metadata  # the M added items
    removed: np.ndarray  # R int64, sorted, unique: segment ids left out

    @classmethod
    def empty(cls, dim: int) -> Delta:
        return cls(np.zeros((0, dim), dtype=np.float32), Metadata([]), np.zeros(0, dtype=np.int64))

    @property
    def size(self) -> int:
        """Rows added plus ids removed: what a compaction would fold into the segment."""
        return len(self.metadata) + len(self.removed)

    def with_added(self, vectors: np.ndarray, items: list[ItemMeta]) -> Delta:
        """This delta plus vectors (MxD unit rows) for `items` (ids not yet in the collection)."""
        return Delta(np.concatenate([self.vectors, vectors]).astype(np.float32, copy=False),
                     Metadata(self.metadata.items + items), self.removed)

    def without(self, ids: np.ndarray) -> Delta:
        """This delta minus `ids`: added rows are dropped, segment ids join `removed`."""
        in_delta = np.isin(self.metadata.ids, ids)  # M bool
        from_segment = np.setdiff1d(ids, self.metadata.ids)
        keep = [it for it, gone in zip(self.metadata.items, in_delta, strict=True) if not gone]
        return Delta(self.vectors[~in_delta], Metadata(keep), np.union1d(self.removed, from_segment))

    def write(self, directory: Path) -> list[str]:
        np.save(directory / DELTA_VECTORS, np.ascontiguousarray(self.vectors, dtype=np.float32))
        self.metadata.write(directory / DELTA_ITEMS)
        np.save(directory / REMOVED_FILE, self.removed.astype(np.int64))
        return list(DELTA_FILES)

    @classmethod
    def read(cls, directory: Path, dim: int) -> Delta:
        """The version's delta; a version written before deltas existed has none."""
        if not (directory / DELTA_VECTORS).is_file():
            return cls.empty(dim)
        return cls(np.load(directory / DELTA_VECTORS), Metadata.read(directory / DELTA_ITEMS),
                   np.load(directory / REMOVED_FILE))


class LiveItems:
    """The items a version serves: its segment's rows minus the removed ids, plus the delta's rows.

    The read API of Metadata (get, in, len, items, ids, label_counts) and lookups by path and content hash,
    all O(1) per call once the segment's lookup tables exist (built once per segment, shared by every version
    linking it).
    """

    def __init__(self, segment: Metadata, delta: Delta):
        self.segment = segment
        self.delta = delta
        self._removed = frozenset(delta.removed.tolist())

    def __len__(self) -> int:
        return len(self.segment) - len(self._removed) + len(self.delta.metadata)

    def __contains__(self, item_id: int) -> bool:
        return item_id in self.delta.metadata or (item_id in self.segment and item_id not in self._removed)

    def get(self, item_id: int) -> ItemMeta:
        """KeyError when the id is not in the collection."""
        if item_id in self.delta.metadata:
            return self.delta.metadata.get(item_id)
        if item_id in self._removed:
            raise KeyError(item_id)
        return self.segment.get(item_id)

    def __iter__(self) -> Iterator[ItemMeta]:
        yield from (it for it in self.segment.items if it.id not in self._removed)
        yield from self.delta.metadata.items

    @property
    def items(self) -> list[ItemMeta]:
        return list(self)

    @property
    def ids(self) -> np.ndarray:
        """N int64 in serving order (segment rows, then delta rows)."""
        if not self._removed and not len(self.delta.metadata):
            return self.segment.ids
        kept = self.segment.ids[~np.isin(self.segment.ids, self.delta.removed)]
        return np.concatenate([kept, self.delta.metadata.ids])

    def _found(self, table_key: str, field: str, key: str) -> ItemMeta | None:
        item_id = getattr(self.delta.metadata, table_key).get(key)
        if item_id is None:
            item_id = getattr(self.segment, table_key).get(key)
        if item_id is None or item_id not in self:
            return None
        item = self.get(item_id)  # a segment row moved or replaced since lives on in the delta, described anew
        return item if getattr(item, field) == key else None

    def find_path(self, path: str) -> ItemMeta | None:
        return self._found("by_path", "path", path)

    def find_sha(self, sha256: str) -> ItemMeta | None:
        """An item with these bytes (a segment item removed or replaced since is not one; its copy in the delta
        is)."""
        found = self._found("by_sha", "sha256", sha256)
        if found is None and sha256 in self.segment.by_sha:  # the first segment holder was removed: look on
            found = next((it for it in self if it.sha256 == sha256), None)
        return found

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self:
            key = "(none)" if it.label is None else it.label
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def check_removable(self, ids: np.ndarray) -> None:
        """Every id is in the collection and some item stays; IndexStoreError / EmptyCollectionError otherwise."""
        absent = [int(i) for i in ids if int(i) not in self]
        if absent:
            raise IndexStoreError(f"ids not in this version: {absent[:10]}{' ...' if len(absent) > 10 else ''}")
        if len(np.unique(ids)) >= len(self):
            raise EmptyCollectionError("removing these ids would leave the collection empty")
