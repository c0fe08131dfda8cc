"""Near-duplicate groups of a version, from its stored unit embeddings alone (no model, any index kind).

Each live image (the base segment's rows not removed, plus the delta's rows) is linked to its NEIGHBOURS nearest
other live images by an *exact* k-NN over the stored embeddings, so the groups never depend on the ANN kind
(flat, HNSW, IVF) the version searches with. The links whose cosine reaches a threshold form a graph; its
connected components (union-find) of two or more images are the groups, largest first.

    graph = live_graph(searcher)                         # O(N^2 D) flops, O(N k) memory: chunked queries,
    groups = duplicate_groups(graph, threshold=0.97)     #   FAISS tiles the base; then O(N k) per threshold
    groups[0].ids, groups[0].scores                      # members, each with its best cosine in the group
    default_threshold(manifest, graph, estimate)         # -> (threshold, source): see its docstring

`segment_knn` is the expensive part (about 50 s for 100,000 x 128 on one core here). A process serving a
version keeps it per base segment and passes it back (`live_graph(searcher, segment=...)`): a version made by
an add or a delete then costs O(delta x N) (its added rows against everything, everything against its added
rows, and the few rows whose neighbour lists lost more than SEGMENT_EXTRA entries to deletes, recomputed),
with the same answer as a full recompute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from .search import Searcher, top_k

NEIGHBOURS = 10  # nearest other images examined per image: a group links through these
SEGMENT_EXTRA = 6  # a segment's lists keep this many more, so that deletes rarely force a recompute
QUERY_CHUNK = 2048  # query rows per FAISS call: its answer is chunk x k, the base is tiled by FAISS itself
# last-resort default: the top 5% of nearest-neighbour cosines (no model measurement), the cap that the calibrated
# threshold keeps too (trainer/quality.py: DUPLICATE_MAX_LINKED)
NEAREST_QUANTILE = 0.95


@dataclass(frozen=True)
class KnnGraph:
    """Each live image's nearest other live images, by exact inner product of unit rows."""

    ids: np.ndarray  # N int64: the image id of each row
    scores: np.ndarray  # N x k float32: cosines, descending; -inf where a row has fewer than k others
    rows: np.ndarray  # N x k int64: rows of the neighbours; -1 where none

    @property
    def size(self) -> int:
        return len(self.ids)

    def nearest(self) -> np.ndarray:
        """N: each image's cosine to its nearest other image (-inf when alone)."""
        return self.scores[:, 0] if self.scores.shape[1] else np.full(self.size, -np.inf, np.float32)


@dataclass(frozen=True)
class Group:
    """One group of near duplicates: its members, best first, each with its best cosine to another member."""

    ids: np.ndarray  # M >= 2 int64 image ids
    scores: np.ndarray  # M float32

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def best(self) -> float:
        return float(self.scores[0])


def exact_knn(queries: np.ndarray, base: np.ndarray, k: int, own: np.ndarray | None = None,
              chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """queries: QxD, base: NxD unit float32 rows -> (scores QxK descending, rows QxK into base), padded with
    -inf / -1. own: Q rows of base to leave out (each query's own row), or None. Memory O(chunk x k) besides
    FAISS's tiles; the base is read as is (a memory map stays one)."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    ask = min(k + (own is not None), len(base))
    if not len(queries) or ask == 0 or k == 0:
        return scores, rows
    base = np.ascontiguousarray(base, dtype=np.float32)
    for start in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)
        s, r = faiss.knn(q, base, ask, faiss.METRIC_INNER_PRODUCT)  # c x ask
        if own is not None:
            mine = r == own[start:start + len(q), None]
            s[mine], r[mine] = -np.inf, -1
        s, r = top_k(s, r, k)  # drops the own row (or the last, when ties pushed it out)
        scores[start:start + len(q)], rows[start:start + len(q)] = s, r
    return scores, rows


def segment_knn(vectors: np.ndarray, k: int = NEIGHBOURS + SEGMENT_EXTRA) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of every row of a base segment (scores NxK, rows NxK): what `live_graph` reuses
    for every version sharing the segment."""
    return exact_knn(vectors, vectors, k, own=np.arange(len(vectors)))


def live_graph(searcher: Searcher, k: int = NEIGHBOURS,
               segment: tuple[np.ndarray, np.ndarray] | None = None) -> KnnGraph:
    """The k-NN graph of a version's live images. segment: `segment_knn` of its base segment (computed here when
    None, and then not kept: pass it to reuse it)."""
    seg_ids = searcher.segment.ids  # N_s
    kept = np.flatnonzero(~np.isin(seg_ids, searcher.delta.removed))  # segment rows still in the collection
    added = searcher.delta.vectors  # M x D
    ids = np.concatenate([seg_ids[kept], searcher.delta.metadata.ids])  # live rows: kept segment rows, then delta
    if segment is None and (len(kept) < len(seg_ids) or len(added)):  # nothing to reuse: one exact pass
        live = np.concatenate([np.asarray(searcher.vectors[kept], np.float32), added])
        return KnnGraph(ids, *exact_knn(live, live, k, own=np.arange(len(ids))))
    if segment is None:
        return KnnGraph(ids, *segment_knn(searcher.vectors, k))
    return _patched(searcher, k, segment, kept, ids)


def _patched(searcher: Searcher, k: int, segment: tuple[np.ndarray, np.ndarray], kept: np.ndarray,
             ids: np.ndarray) -> KnnGraph:
    """The live graph from the segment's graph: deleted neighbours dropped, added rows merged in, rows left with
    too few neighbours recomputed. Equal to an exact pass over the live rows."""
    seg_scores, seg_rows = segment
    n_seg, width = seg_scores.shape
    added = searcher.delta.vectors
    n_kept, n = len(kept), len(ids)
    live_of = np.full(n_seg, -1, dtype=np.int64)  # segment row -> live row (-1: removed)
    live_of[kept] = np.arange(n_kept)
    rows = seg_rows[kept]  # n_kept x width, segment rows
    rows = np.where(rows >= 0, live_of[np.maximum(rows, 0)], -1)
    scores = np.where(rows >= 0, seg_scores[kept], -np.inf).astype(np.float32)
    complete = width >= n_seg - 1  # the lists hold every other segment row: nothing beyond them to miss
    redo = np.zeros(n_kept, dtype=bool) if complete else (rows >= 0).sum(1) < min(k, n_kept - 1)
    scores, rows = top_k(scores, rows, k)
    if len(added) or redo.any():
        live = np.concatenate([np.asarray(searcher.vectors[kept], np.float32), added])  # n x D
        if len(added):
            # the segment rows' nearest added rows, merged in; the added rows' nearest of everything
            s, r = exact_knn(live[:n_kept], added, k)
            scores, rows = top_k(np.concatenate([scores, s], 1), np.concatenate([rows, r + n_kept * (r >= 0)], 1), k)
            own = np.arange(n_kept, n)
            s, r = exact_knn(added, live, k, own=own)
            scores, rows = np.concatenate([scores, s]), np.concatenate([rows, r])
        if redo.any():
            again = np.flatnonzero(redo)
            scores[again], rows[again] = exact_knn(live[again], live, k, own=again)
    return KnnGraph(ids, scores, rows)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over n nodes and the edges (a[i], b[i]) -> N: each node's component, named by its smallest
    node."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.fromiter((find(x) for x in range(n)), dtype=np.int64, count=n)


def duplicate_groups(graph: KnnGraph, threshold: float) -> list[Group]:
    """The groups of `graph` at `threshold`: connected components of its links with cosine >= threshold, of two
    images or more; largest first, then by best cosine, then by smallest id. Each member's score is its best
    cosine to another member (its nearest neighbour, which is in its group)."""
    a, j = np.nonzero((graph.scores >= threshold) & (graph.rows >= 0))  # link (a, rows[a, j])
    b, s = graph.rows[a, j], graph.scores[a, j]
    label = components(graph.size, a, b)
    best = np.full(graph.size, -np.inf, dtype=np.float32)
    np.maximum.at(best, a, s)
    np.maximum.at(best, b, s)
    linked = np.flatnonzero(best > -np.inf)
    groups = []
    order = np.argsort(label[linked], kind="stable")
    for members in np.split(linked[order], np.flatnonzero(np.diff(label[linked][order])) + 1):
        if len(members) < 2:
            continue
        ids, scores = graph.ids[members], best[members]
        rank = np.lexsort((ids, -scores))  # best cosine first, then smallest id
        groups.append(Group(ids[rank], scores[rank]))
    groups.sort(key=lambda g: (-g.size, -g.best, int(g.ids.min())))
    return groups


def stored_threshold(manifest: dict) -> float | None:
    """The threshold calibrated when the version's model was published (trainer/quality.py), if it was."""
    value = (manifest.get("quality") or {}).get("duplicate_threshold")
    return None if value is None else float(value)


def nearest_threshold(graph: KnnGraph, quantile: float = NEAREST_QUANTILE) -> float:
    """The cosine at or above which only the top 1 - quantile of the images' nearest-neighbour cosines lie."""
    nearest = graph.nearest()
    nearest = nearest[np.isfinite(nearest)]
    return float(np.quantile(nearest, quantile)) if len(nearest) else 1.0


def default_threshold(manifest: dict, graph: KnnGraph,
                      estimate: Callable[[], dict | None] | None = None) -> tuple[float, str]:
    """(threshold, source) of a version: "calibrated" (measured at publish with its model: copies of sampled
    images against their nearest other images), else "estimated" (the same measure made now by `estimate`,
    which returns trainer.quality's figures or None), else "nearest" (`nearest_threshold`)."""
    stored = stored_threshold(manifest)
    if stored is not None:
        return stored, "calibrated"
    figures = estimate() if estimate is not None else None
    if figures and figures.get("duplicate_threshold") is not None:
        return float(figures["duplicate_threshold"]), "estimated"
    return nearest_threshold(graph), "nearest"
