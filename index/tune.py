"""Recall@k against exact search, and the smallest efSearch / nprobe that reaches a recall target."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from .plan import IndexSpec
from .search import search_params

log = logging.getLogger(__name__)

RECALL_K = 10
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Tuning:
    param: str | None  # efSearch | nprobe | None (exact search)
    value: int | None  # the chosen setting
    recall: float  # recall@10 at that setting on the held-out queries (1.0 for exact search, by construction)
    target: float
    queries: int  # held-out queries measured (0 for exact search)
    curve: tuple[tuple[int, float], ...] = ()  # (setting, recall) for every setting tried

    @property
    def target_met(self) -> bool:
        return self.recall >= self.target

    def to_dict(self) -> dict:
        return {**asdict(self), "curve": [list(c) for c in self.curve], "target_met": self.target_met,
                "k": RECALL_K}

    @classmethod
    def exact(cls, target: float) -> Tuning:
        return cls(None, None, 1.0, target, 0)

    @classmethod
    def from_dict(cls, d: dict) -> Tuning:
        return cls(d["param"], d["value"], float(d["recall"]), float(d["target"]), int(d["queries"]),
                   tuple((int(v), float(r)) for v, r in d.get("curve", ())))


def nprobe_grid(nlist: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, ... (powers of two and the midpoints between them), ending at nlist."""
    grid, p = [], 1
    while p < nlist:
        grid += [p] if p < 2 else [p, p + p // 2]
        p *= 2
    return tuple(v for v in grid if v < nlist) + (nlist,)


def candidate_values(spec: IndexSpec) -> tuple[int, ...]:
    return EF_GRID if spec.param == "efSearch" else nprobe_grid(spec.nlist)


def exact_neighbours(base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k. base: NxD, base_ids: N, queries: QxD -> ids QxK."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(np.ascontiguousarray(base, dtype=np.float32))
    _, rows = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # Q x K rows into base
    return np.where(rows >= 0, base_ids[np.maximum(rows, 0)], -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of truth (QxK ids) present in the same row of found (QxK' ids)."""
    k = truth.shape[1]
    hits = [np.isin(t[t >= 0], f[f >= 0]).sum() for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def tune(index: faiss.Index, spec: IndexSpec, queries: np.ndarray, truth: np.ndarray,
         target: float) -> Tuning:
    """Smallest setting whose recall@10 on `queries` (ground truth `truth`: Qx10 ids) reaches `target`.

    When no setting does (lossy codes: SQ8, PQ), the best one is kept and a warning logged.
    """
    curve = []
    for value in candidate_values(spec):
        _, found = index.search(queries, RECALL_K, params=search_params(spec, value, RECALL_K, index.ntotal))
        curve.append((value, recall_at_k(found, truth)))
        if curve[-1][1] >= target:
            break
    value, recall = max(curve, key=lambda c: c[1]) if curve[-1][1] < target else curve[-1]
    if recall < target:
        log.warning("%s reaches recall@%d %.3f at best (%s=%d), under the target %.3f",
                    spec.kind, RECALL_K, recall, spec.param, value, target)
    return Tuning(spec.param, value, recall, target, len(queries), tuple(curve))
