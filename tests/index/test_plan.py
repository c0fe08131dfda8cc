"""Choosing the index kind: pure functions of size, dimension and config."""

import pytest

from index.config import GIB, IndexConfig
from index.errors import EmptyCollectionError, IndexStoreError
from index.plan import AUTO_ORDER, choose_spec, default_nlist, estimate_bytes, spec_for
from index.tune import nprobe_grid


def test_exact_search_up_to_exact_max():
    cfg = IndexConfig(exact_max=100_000)
    assert choose_spec(50_000, 128, cfg).kind == "flat"
    assert choose_spec(100_000, 128, cfg).kind == "flat"
    assert choose_spec(100_001, 128, cfg).kind == AUTO_ORDER[0]
    assert choose_spec(50_000, 128, cfg).factory == "IDMap2,Flat"


def test_memory_budget_moves_to_smaller_kinds():
    n, d = 10_000_000, 128
    chosen = []
    for budget in (64 * GIB, 6 * GIB, 2 * GIB):
        spec = choose_spec(n, d, IndexConfig(memory_budget=budget))
        assert estimate_bytes(spec, n) <= budget
        chosen.append(spec.kind)
    assert chosen == ["ivf_flat", "ivf_flat", "ivf_sq8"]
    assert "hnsw" not in AUTO_ORDER  # only when named
    sizes = [estimate_bytes(spec_for(k, n, d, IndexConfig()), n) for k in ("hnsw", "ivf_flat", "ivf_sq8")]
    assert sizes == sorted(sizes, reverse=True)


def test_pq_only_when_named():
    tiny = IndexConfig(memory_budget=1 << 20)
    with pytest.raises(IndexStoreError, match="ivf_pq"):
        choose_spec(10_000_000, 128, tiny)
    spec = choose_spec(10_000_000, 128, IndexConfig(kind="ivf_pq"))
    assert spec.kind == "ivf_pq" and spec.pq_m == 32 and spec.factory == f"IVF{spec.nlist},PQ32"
    for budget in (2 * GIB, 4 * GIB, 64 * GIB):
        assert choose_spec(10_000_000, 128, IndexConfig(memory_budget=budget)).kind != "ivf_pq"


def test_explicit_kind_and_refusals():
    assert choose_spec(5000, 64, IndexConfig(kind="hnsw", hnsw_m=16)).factory == "IDMap2,HNSW16,Flat"
    assert choose_spec(5000, 64, IndexConfig(kind="ivf_sq8", nlist=32)).factory == "IVF32,SQ8"
    with pytest.raises(EmptyCollectionError):
        choose_spec(0, 64, IndexConfig())
    with pytest.raises(IndexStoreError, match="too few"):
        choose_spec(500, 64, IndexConfig(kind="hnsw"))
    with pytest.raises(IndexStoreError, match="divide"):
        choose_spec(5000, 64, IndexConfig(kind="ivf_pq", pq_m=7))
    with pytest.raises(ValueError):
        IndexConfig(kind="lsh")
    with pytest.raises(ValueError):
        IndexConfig(recall_target=1.5)


@pytest.mark.parametrize("n, expected", [(1_000_000, 4096), (50_000, 1024), (2_000, 32), (100, 2)])
def test_default_nlist(n, expected):
    assert default_nlist(n) == expected
    assert default_nlist(n) * 39 <= 0.9 * n or default_nlist(n) == 1


def test_nprobe_grid():
    assert nprobe_grid(16) == (1, 2, 3, 4, 6, 8, 12, 16)
    assert nprobe_grid(1) == (1,)
    grid = nprobe_grid(4096)
    assert grid[-1] == 4096 and list(grid) == sorted(set(grid))
