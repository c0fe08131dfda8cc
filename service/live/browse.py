"""The collection as a list (GET /images): the served version's live images, sorted and filtered by label, one
page at a time. The order of each (version, sort, label) is computed once (O(N log N)) and kept, so paging
through it costs O(page)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from index import ItemMeta

from .version import LiveVersion

Sort = Literal["newest", "path"]
ORDERS_KEPT = 8  # (version, sort, label) orders kept


@dataclass(frozen=True)
class Page:
    total: int  # images matching the filter
    items: list[ItemMeta]
    labels: dict[str, int]  # images per label in the whole collection (unlabelled ones not counted)


def ordered_ids(items: list[ItemMeta], sort: Sort, label: str | None) -> np.ndarray:
    """Ids of `items` with `label` (None: all): newest first (by the time each entered the index, then the
    larger id), or by path (then id)."""
    chosen = [it for it in items if label is None or it.label == label]
    if sort == "newest":
        chosen.sort(key=lambda it: (it.added, it.id), reverse=True)
    else:
        chosen.sort(key=lambda it: (it.path, it.id))
    return np.fromiter((it.id for it in chosen), dtype=np.int64, count=len(chosen))


class Browse:
    """Pages of the served version's images (see the module docstring). Blocking: call it in a thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._orders: OrderedDict[tuple[str, str, str | None], np.ndarray] = OrderedDict()
        self._labels: tuple[str, dict[str, int]] | None = None

    def page(self, live: LiveVersion, sort: Sort, label: str | None, offset: int, limit: int) -> Page:
        ids = self._order(live, sort, label)
        metadata = live.searcher.metadata
        return Page(len(ids), [metadata.get(int(i)) for i in ids[offset:offset + limit]], self._label_counts(live))

    def _order(self, live: LiveVersion, sort: Sort, label: str | None) -> np.ndarray:
        key = (live.version, sort, label)
        with self._lock:
            if (found := self._orders.get(key)) is not None:
                self._orders.move_to_end(key)
                return found
        ids = ordered_ids(live.searcher.metadata.items, sort, label)
        with self._lock:
            self._orders[key] = ids
            while len(self._orders) > ORDERS_KEPT:
                self._orders.popitem(last=False)
        return ids

    def _label_counts(self, live: LiveVersion) -> dict[str, int]:
        with self._lock:
            if self._labels is not None and self._labels[0] == live.version:
                return self._labels[1]
        counts: dict[str, int] = {}
        for it in live.searcher.metadata:
            if it.label is not None:
                counts[it.label] = counts.get(it.label, 0) + 1
        counts = dict(sorted(counts.items()))
        with self._lock:
            self._labels = (live.version, counts)
        return counts
