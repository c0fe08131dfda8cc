"""Searcher: batches of query vectors -> top-k (id, score, metadata) from one version's FAISS index.

A Searcher never changes after construction (updates make a new version), so any number of threads may
search at once: FAISS CPU indexes are safe for concurrent searches, and a GPU index is guarded by a lock.
Search-time parameters (efSearch, nprobe) are passed per call, never set on the shared index.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np

from .delta import Delta, LiveItems
from .errors import DimensionMismatchError
from .metadata import ItemMeta, Metadata
from .plan import IndexSpec
from .prefilter import Int8Prefilter

log = logging.getLogger(__name__)

MAX_K = 1000
PREFILTER_MAX_BATCH = 512  # prefilter 4.3x faster here, FAISS's batch scan 2.7x at 1,000 (docs/index-prefilter.md)


@dataclass(frozen=True, slots=True)
class Hit:
    id: int
    score: float  # cosine similarity: inner product of unit vectors (approximate for SQ8/PQ codes)
    item: ItemMeta


def search_params(spec: IndexSpec, value: int | None, k: int, ntotal: int) -> faiss.SearchParameters | None:
    """Per-call FAISS parameters, widened for large k so that the index can return k results: HNSW keeps at
    least k candidates, IVF probes lists holding about twice k vectors on average."""
    if spec.param == "efSearch":
        return faiss.SearchParametersHNSW(efSearch=max(int(value), k))
    if spec.param == "nprobe":
        wide = math.ceil(2 * k * spec.nlist / max(ntotal, 1))
        return faiss.SearchParametersIVF(nprobe=min(spec.nlist, max(int(value), wide)))
    return None


def unit_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """D or BxD, any float dtype -> BxD float32 unit rows; raises on a wrong dimension or bad values."""
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise DimensionMismatchError(f"vectors have shape {tuple(np.shape(vectors))}, the index expects "
                                     f"(batch, {dim})")
    if not np.isfinite(q).all():
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(q, axis=1, keepdims=True)  # B x 1
    if (norms == 0).any():
        raise ValueError("a vector is all zeros")
    return np.ascontiguousarray(q / norms)


def gpu_count() -> int:
    """GPUs usable by this faiss build (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def gpu_clone(index: faiss.Index) -> tuple[faiss.Index, object] | None:
    """(GPU copy of index, its resources), or None where faiss has no GPU or cannot move this kind."""
    if gpu_count() == 0:
        return None
    res = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(res, 0, index), res
    except RuntimeError as e:  # e.g. HNSW has no GPU version
        log.info("searching on the CPU: %s", str(e).splitlines()[0])
        return None


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scores, ids: BxC candidates (-inf / -1 for none) -> the best k per row, BxK, padded with -inf / -1."""
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # B x K
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class Searcher:
    """One version's index, metadata and vectors; read-only.

    index: the FAISS index of the version's base segment, holding every id of `segment`; vectors: N x D (a
    memory map) in segment row order, used for search-by-id. `delta` (index/delta.py) holds what was added
    and removed since the segment was built: removed ids are filtered out of the segment's answers (it is
    asked for k + R), added vectors are scanned exactly, and the two are merged. `metadata` is the live view
    (LiveItems). `with_delta` derives the searcher of a later version sharing the segment (O(delta)).
    `value` is the tuned efSearch / nprobe (None for exact search). Exact search
    on the CPU answers up to PREFILTER_MAX_BATCH queries at a time through an int8 prefilter (index/prefilter.py:
    the same results, a quarter of the memory traffic, ~140 more bytes of RAM per vector); int8_prefilter=False
    scans the fp32 vectors only.
    """

    def __init__(self, index: faiss.Index, spec: IndexSpec, value: int | None, metadata: Metadata,
                 vectors: np.ndarray, gpu: bool = False, int8_prefilter: bool = True, delta: Delta | None = None):
        if index.ntotal != len(metadata) or vectors.shape != (len(metadata), spec.dim):
            raise ValueError(f"index ({index.ntotal}), metadata ({len(metadata)}) and vectors "
                             f"{vectors.shape} disagree")
        self.spec = spec
        self.value = value
        self.segment = metadata
        self.vectors = vectors
        self._set_delta(delta if delta is not None else Delta.empty(spec.dim))
        self.index = index
        self.on_gpu = False
        self._gpu_res = None
        self._lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        self.prefilter: Int8Prefilter | None = None  # exact kinds on the CPU: int8 scan + fp32 rescoring
        if gpu and (moved := gpu_clone(index)) is not None:
            self.index, self._gpu_res = moved
            self.on_gpu = True
            self._lock = threading.Lock()  # FAISS GPU indexes are not safe for concurrent use
        elif int8_prefilter and spec.param is None:
            self.prefilter = Int8Prefilter.of_index(index)

    def _set_delta(self, delta: Delta) -> None:
        if delta.vectors.shape != (len(delta.metadata), self.spec.dim):
            raise ValueError(f"delta vectors {delta.vectors.shape} and items ({len(delta.metadata)}) disagree")
        self.delta = delta
        self.metadata = LiveItems(self.segment, delta)

    def with_delta(self, delta: Delta) -> Searcher:
        """The searcher of a version sharing this one's segment, with another delta: O(delta)."""
        derived = copy.copy(self)
        derived._set_delta(delta)
        return derived

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def ntotal(self) -> int:
        return len(self.metadata)

    def search_arrays(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """queries: BxD -> (scores BxK float32 descending, ids BxK int64), padded with -inf / -1."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        q = unit_rows(queries, self.dim)  # B x D, unit rows
        removed = self.delta.removed
        scores, ids = self._search_segment(q, min(k + len(removed), int(self.index.ntotal)))  # B x K'
        if len(removed):
            gone = np.isin(ids, removed)  # B x K'
            scores[gone], ids[gone] = -np.inf, -1
        if len(self.delta.metadata):
            added = q @ self.delta.vectors.T  # B x D, M x D -> B x M
            scores = np.concatenate([scores, added], axis=1)
            ids = np.concatenate([ids, np.broadcast_to(self.delta.metadata.ids, added.shape)], axis=1)
        if scores.shape[1] != k or len(removed):
            scores, ids = top_k(scores, ids, k)
        return scores, ids

    def _search_segment(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q: BxD unit rows -> the segment's top-k (scores BxK, ids BxK), padded with -inf / -1."""
        if self.prefilter is not None and len(q) <= PREFILTER_MAX_BATCH and self.prefilter.serves(k):
            scores, ids, done = self.prefilter.search(q, k)  # B x K, B x K, B
            if not done.all():
                scores[~done], ids[~done] = self.index.search(q[~done], k)
        else:
            params = search_params(self.spec, self.value, k, int(self.index.ntotal))
            with self._lock:
                scores, ids = self.index.search(q, k, params=params)  # B x K each
        scores[ids < 0] = -np.inf
        return scores, ids

    def search(self, queries: np.ndarray, k: int = 10, min_score: float | None = None) -> list[list[Hit]]:
        """queries: BxD -> per query, up to k hits by decreasing score, those under min_score left out."""
        scores, ids = self.search_arrays(queries, k)
        out = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            keep = row_ids >= 0
            if min_score is not None:
                keep &= row_scores >= min_score
            out.append([Hit(int(i), float(s), self.metadata.get(int(i)))
                        for s, i in zip(row_scores[keep], row_ids[keep], strict=True)])
        return out

    def vector(self, item_id: int) -> np.ndarray:
        """The stored embedding of `item_id` (D,); KeyError when the id is not in this version."""
        if item_id in self.delta.metadata:
            return np.array(self.delta.vectors[self.delta.metadata.row(item_id)], dtype=np.float32)
        if item_id not in self.metadata:
            raise KeyError(item_id)
        return np.array(self.vectors[self.segment.row(item_id)], dtype=np.float32)
