"""Building a version's FAISS index: train and add (on a GPU when faiss has one), then tune on held-out data.

Tuning holds out a random sample of the collection, builds on the rest, picks the smallest search
setting whose recall@10 against exact search on the held-out sample reaches the target, then adds the
held-out vectors too, so the final index holds every vector and the recall was measured on unseen queries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np

from .config import IndexConfig
from .plan import IndexSpec
from .search import gpu_count
from .tune import RECALL_K, Tuning, exact_neighbours, tune

log = logging.getLogger(__name__)

TRAIN_POINTS_PER_LIST = 50  # k-means sample for IVF kinds: nlist * 50 vectors (FAISS's minimum is 39)
MIN_TRAIN_POINTS = 10_000  # and at least this many: PQ / SQ codebooks are trained on the same sample
GPU_KINDS = ("ivf_flat", "ivf_sq8")  # kinds whose training and adding move to the GPU when present


@dataclass
class Built:
    index: faiss.Index  # CPU index holding every vector
    spec: IndexSpec
    tuning: Tuning
    seconds: float  # wall time of train + add + tune


def new_index(spec: IndexSpec, seed: int = 0) -> faiss.Index:
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind.startswith("ivf"):
        index.cp.seed = seed  # k-means initialisation
    if spec.kind == "ivf_pq":
        index.do_polysemous_training = False  # only for Hamming-filtered search, which is not used
    return index


def train_and_add(spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, gpu: bool = True,
                  seed: int = 0) -> faiss.Index:
    """A CPU index of `spec` holding vectors (NxD float32) under ids (N int64)."""
    index = new_index(spec, seed)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    sample = vectors
    if not index.is_trained:
        n_train = min(len(vectors), max(TRAIN_POINTS_PER_LIST * spec.nlist, MIN_TRAIN_POINTS))
        rows = np.random.default_rng(seed).choice(len(vectors), n_train, replace=False)
        sample = vectors[np.sort(rows)]
    if gpu and spec.kind in GPU_KINDS and gpu_count() > 0:
        res = faiss.StandardGpuResources()
        on_gpu = faiss.index_cpu_to_gpu(res, 0, index)
        on_gpu.train(sample)
        on_gpu.add_with_ids(vectors, ids)
        return faiss.index_gpu_to_cpu(on_gpu)
    if not index.is_trained:
        index.train(sample)
    index.add_with_ids(vectors, ids)
    return index


def holdout_rows(n: int, wanted: int, seed: int) -> np.ndarray:
    """A sorted random sample of at most n // 10 rows (at least one) used as tuning queries."""
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, max(1, min(wanted, n // 10)), replace=False))


def build_tuned(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec, cfg: IndexConfig) -> Built:
    """Index of every vector; approximate kinds get the smallest setting reaching cfg.recall_target."""
    t0 = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # N x D
    ids = np.ascontiguousarray(ids, dtype=np.int64)  # N
    if spec.param is None:
        index = train_and_add(spec, vectors, ids, cfg.gpu, cfg.seed)
        return Built(index, spec, Tuning.exact(cfg.recall_target), time.perf_counter() - t0)
    held = holdout_rows(len(vectors), cfg.tune_queries, cfg.seed)  # Q
    rest = np.setdiff1d(np.arange(len(vectors)), held, assume_unique=True)  # N - Q
    index = train_and_add(spec, vectors[rest], ids[rest], cfg.gpu, cfg.seed)
    truth = exact_neighbours(vectors[rest], ids[rest], vectors[held], RECALL_K)  # Q x 10 ids
    tuning = tune(index, spec, vectors[held], truth, cfg.recall_target)
    index.add_with_ids(vectors[held], ids[held])
    seconds = time.perf_counter() - t0
    log.info("built %s over %d vectors in %.1f s: %s=%s, recall@%d %.3f", spec.factory, len(vectors), seconds,
             tuning.param, tuning.value, RECALL_K, tuning.recall)
    return Built(index, spec, tuning, seconds)
