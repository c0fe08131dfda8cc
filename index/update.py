"""Incremental updates: a new version's content derived from its base by adding or removing items.

Exact and IVF indexes are updated in place (IVF keeps its trained centroids); HNSW cannot delete, so a
removal rebuilds its graph from the stored embeddings. The base's tuning is carried over unchanged.
"""

from __future__ import annotations

import numpy as np

from .build import train_and_add
from .content import Content
from .errors import EmptyCollectionError, IndexStoreError
from .metadata import ItemMeta, Metadata, NewItem
from .search import unit_rows


def with_added(base: Content, vectors: np.ndarray, items: list[NewItem], first_id: int,
               added: str) -> tuple[Content, np.ndarray]:
    """base + vectors (MxD) under new ids first_id.. -> (content, ids M)."""
    vectors = unit_rows(vectors, base.spec.dim)  # M x D
    if len(items) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(items)} items")
    if len(vectors) == 0:
        raise ValueError("nothing to add")
    ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)  # M
    base.index.add_with_ids(vectors, ids)
    rows = [ItemMeta(int(i), it.path, it.label, it.width, it.height, it.sha256, added)
            for i, it in zip(ids, items, strict=True)]
    content = Content(base.index, base.spec, base.tuning, np.concatenate([base.embeddings, vectors]),
                      Metadata(base.metadata.items + rows), base.model_dir, base.link_model)
    return content, ids


def without(base: Content, ids: np.ndarray) -> Content:
    """base minus the items `ids`; every id must be present."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    absent = [int(i) for i in ids if int(i) not in base.metadata]
    if absent:
        raise IndexStoreError(f"ids not in this version: {absent[:10]}{' ...' if len(absent) > 10 else ''}")
    keep = ~np.isin(base.metadata.ids, ids)  # N bool
    if not keep.any():
        raise EmptyCollectionError("removing these ids would leave the collection empty")
    embeddings = base.embeddings[keep]
    metadata = Metadata([it for it, k in zip(base.metadata.items, keep, strict=True) if k])
    if base.spec.kind == "hnsw":
        index = train_and_add(base.spec, embeddings, metadata.ids, gpu=False)
    else:
        index = base.index
        index.remove_ids(ids)
    return Content(index, base.spec, base.tuning, embeddings, metadata, base.model_dir, base.link_model)
