"""IndexConfig: how a version's FAISS index is chosen, built and tuned (saved into every manifest)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

KINDS = ("auto", "flat", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq")
GIB = 1 << 30


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"  # auto | flat | hnsw | ivf_flat | ivf_sq8 | ivf_pq (PQ only when named: see plan.py)
    exact_max: int = 100_000  # vectors; auto keeps exact search up to this size (~2 ms/query at 100k x 128)
    memory_budget: int = 4 * GIB  # bytes of RAM the index may take; auto picks the fastest kind that fits
    recall_target: float = 0.95  # recall@10 against exact search, on held-out vectors
    tune_queries: int = 1000  # held-out vectors used for tuning (at most a tenth of the collection)
    hnsw_m: int = 32  # graph degree (links per node on the upper layers, 2M on the base layer)
    hnsw_ef_construction: int = 40  # FAISS default
    nlist: int = 0  # IVF inverted lists; 0 = 4 * sqrt(n) rounded to a power of two
    pq_m: int = 0  # PQ sub-quantizers of 8 bits; 0 = dim // 4 (32 bytes per 128-d vector)
    gpu: bool = True  # build on the GPU when faiss sees one (IVF kinds; flat and HNSW build on the CPU)
    seed: int = 0  # held-out sample and k-means initialisation

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target}")
        if self.exact_max < 0 or self.memory_budget <= 0 or self.tune_queries < 10:
            raise ValueError("exact_max >= 0, memory_budget > 0 and tune_queries >= 10 are required")
        if self.hnsw_m < 4 or self.hnsw_ef_construction < 1 or self.nlist < 0 or self.pq_m < 0:
            raise ValueError("hnsw_m >= 4, hnsw_ef_construction >= 1, nlist >= 0 and pq_m >= 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
