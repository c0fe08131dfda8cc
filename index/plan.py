"""Which FAISS index a collection gets: pure functions of its size, its dimension and an IndexConfig.

Exact search (IDMap2 over Flat) up to `exact_max` vectors. Above that, the first approximate kind of
`AUTO_ORDER` whose estimated RAM fits the memory budget. HNSW and PQ are built only when named; PQ's
coarse codes cannot order the near-ties that instance-level embeddings produce.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import IndexConfig
from .errors import EmptyCollectionError, IndexStoreError

# IVF-Flat first: in docs/index-benchmark.md it reaches recall@10 >= 0.95 at 1M in a fraction of HNSW's build
# time, searches faster there, and removes in place; HNSW (more RAM, no removal) is built only when named
AUTO_ORDER = ("ivf_flat", "ivf_sq8")
SEARCH_PARAM = {"flat": None, "hnsw": "efSearch", "ivf_flat": "nprobe", "ivf_sq8": "nprobe",
                "ivf_pq": "nprobe"}
IDMAP2_BYTES = 48  # per vector: the id array plus the reverse hash map of IndexIDMap2
IVF_ID_BYTES = 8  # per vector: the id stored next to each code in an inverted list
MIN_POINTS_PER_LIST = 39  # FAISS's k-means minimum training points per centroid
MIN_APPROXIMATE = 1000  # vectors: fewer gain nothing from an approximate index and are too few to tune on


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat | hnsw | ivf_flat | ivf_sq8 | ivf_pq
    dim: int
    nlist: int = 0  # IVF kinds
    hnsw_m: int = 0  # hnsw
    pq_m: int = 0  # ivf_pq

    @property
    def factory(self) -> str:
        """The faiss.index_factory string (inner-product metric)."""
        return {
            "flat": "IDMap2,Flat",
            "hnsw": f"IDMap2,HNSW{self.hnsw_m},Flat",
            "ivf_flat": f"IVF{self.nlist},Flat",
            "ivf_sq8": f"IVF{self.nlist},SQ8",
            "ivf_pq": f"IVF{self.nlist},PQ{self.pq_m}",
        }[self.kind]

    @property
    def param(self) -> str | None:
        """The search-time knob traded against recall: efSearch, nprobe, or None for exact search."""
        return SEARCH_PARAM[self.kind]

    def to_dict(self) -> dict:
        return {**asdict(self), "factory": self.factory, "param": self.param}

    @classmethod
    def from_dict(cls, d: dict) -> IndexSpec:
        return cls(d["kind"], int(d["dim"]), int(d.get("nlist", 0)), int(d.get("hnsw_m", 0)),
                   int(d.get("pq_m", 0)))


def default_nlist(n: int) -> int:
    """4 * sqrt(n) rounded to a power of two, with at least MIN_POINTS_PER_LIST training points per list
    among the 90% of the vectors that tuning does not hold out."""
    target = 4 * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(target, 1)))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > 0.9 * n:
        nlist //= 2
    return nlist


def bytes_per_vector(spec: IndexSpec) -> float:
    """Estimated resident bytes per indexed vector (docs/index-benchmark.md has the measured values)."""
    d = spec.dim
    if spec.kind == "flat":
        return 4 * d + IDMAP2_BYTES
    if spec.kind == "hnsw":
        # base layer: 2M int32 links; upper layers hold 1/M of the nodes with M links each; level + offset
        return 4 * d + 4 * 2 * spec.hnsw_m + 4 * spec.hnsw_m / (spec.hnsw_m - 1) + 12 + IDMAP2_BYTES
    if spec.kind == "ivf_flat":
        return 4 * d + IVF_ID_BYTES
    if spec.kind == "ivf_sq8":
        return d + IVF_ID_BYTES
    return spec.pq_m + IVF_ID_BYTES  # ivf_pq: one byte per sub-quantizer


def estimate_bytes(spec: IndexSpec, n: int) -> int:
    """Estimated RAM of the index holding n vectors, coarse centroids included."""
    return int(n * bytes_per_vector(spec) + 4 * spec.dim * spec.nlist)


def spec_for(kind: str, n: int, dim: int, cfg: IndexConfig) -> IndexSpec:
    if kind == "flat":
        return IndexSpec("flat", dim)
    if kind == "hnsw":
        return IndexSpec("hnsw", dim, hnsw_m=cfg.hnsw_m)
    nlist = min(cfg.nlist, n) if cfg.nlist else default_nlist(n)
    if kind == "ivf_pq":
        pq_m = cfg.pq_m or max(1, dim // 4)
        if dim % pq_m:
            raise IndexStoreError(f"pq_m={pq_m} must divide the dimension {dim}")
        return IndexSpec("ivf_pq", dim, nlist=nlist, pq_m=pq_m)
    return IndexSpec(kind, dim, nlist=nlist)


def choose_spec(n: int, dim: int, cfg: IndexConfig) -> IndexSpec:
    """The index kind for n vectors of dimension dim under cfg (kind, exact_max, memory_budget)."""
    if n <= 0:
        raise EmptyCollectionError("the collection is empty: there is nothing to index")
    if cfg.kind not in ("auto", "flat") and n < MIN_APPROXIMATE:
        raise IndexStoreError(f"{n} vectors are too few for an approximate index (at least "
                              f"{MIN_APPROXIMATE}): use kind=flat")
    if cfg.kind != "auto":
        return spec_for(cfg.kind, n, dim, cfg)
    candidates = (("flat",) if n <= cfg.exact_max else ()) + AUTO_ORDER
    for kind in candidates:
        spec = spec_for(kind, n, dim, cfg)
        if estimate_bytes(spec, n) <= cfg.memory_budget:
            return spec
    smallest = spec_for("ivf_sq8", n, dim, cfg)
    raise IndexStoreError(
        f"no index for {n} x {dim} vectors fits the memory budget of {cfg.memory_budget / 2**30:.2f} GiB "
        f"(IVF-SQ8 needs about {estimate_bytes(smallest, n) / 2**30:.2f} GiB): raise the budget or ask "
        f"for kind=ivf_pq explicitly")
