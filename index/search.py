"""Searcher: batches of query vectors -> top-k (id, score, metadata) from one version's FAISS index.

A Searcher never changes after construction (updates make a new version), so any number of threads may
search at once: FAISS CPU indexes are safe for concurrent searches, and a GPU index is guarded by a lock.
Search-time parameters (efSearch, nprobe) are passed per call, never set on the shared index.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np

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


class Searcher:
    """One version's index, metadata and vectors; read-only.

    index: the FAISS index holding every id of `metadata`; vectors: N x D (a memory map) in metadata row
    order, used for search-by-id. `value` is the tuned efSearch / nprobe (None for exact search). Exact search
    on the CPU answers up to PREFILTER_MAX_BATCH queries at a time through an int8 prefilter (index/prefilter.py:
    the same results, a quarter of the memory traffic, ~140 more bytes of RAM per vector); int8_prefilter=False
    scans the fp32 vectors only.
    """

    def __init__(self, index: faiss.Index, spec: IndexSpec, value: int | None, metadata: Metadata,
                 vectors: np.ndarray, gpu: bool = False, int8_prefilter: bool = True):
        if index.ntotal != len(metadata) or vectors.shape != (len(metadata), spec.dim):
            raise ValueError(f"index ({index.ntotal}), metadata ({len(metadata)}) and vectors "
                             f"{vectors.shape} disagree")
        self.spec = spec
        self.value = value
        self.metadata = metadata
        self.vectors = vectors
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

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search_arrays(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """queries: BxD -> (scores BxK float32 descending, ids BxK int64), padded with -inf / -1."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        q = unit_rows(queries, self.dim)  # B x D, unit rows
        if self.prefilter is not None and len(q) <= PREFILTER_MAX_BATCH and self.prefilter.serves(k):
            scores, ids, done = self.prefilter.search(q, k)  # B x K, B x K, B
            if not done.all():
                scores[~done], ids[~done] = self.index.search(q[~done], k)
        else:
            params = search_params(self.spec, self.value, k, self.ntotal)
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
        return np.array(self.vectors[self.metadata.row(item_id)], dtype=np.float32)
