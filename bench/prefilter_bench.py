"""Int8 prefilter: the measurements behind its constants, side by side with the fp32 scan in one run.

- collection size: where the prefilter starts to beat the fp32 scan for one query (MIN_VECTORS);
- batch size: per-query cost of the prefilter path against FAISS's scan of a batch (PREFILTER_MAX_BATCH);
- load: time and resident memory that building the filter adds when a version loads.

    python bench/prefilter_bench.py [--out docs/index-prefilter.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index_bench import clustered, machine  # noqa: E402

from index.build import train_and_add  # noqa: E402
from index.plan import IndexSpec  # noqa: E402
from index.prefilter import Int8Prefilter  # noqa: E402

K = 10
QUERIES = 300
SIZES = (4096, 8192, 12_288, 16_384, 24_576, 50_000)
BATCHES = (1, 8, 64, 256, 512, 1000)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def prefiltered_search(prefilter: Int8Prefilter, index: faiss.Index, q: np.ndarray) -> None:
    """What Searcher.search_arrays does on its prefilter path."""
    _, _, done = prefilter.search(q, K)
    if not done.all():
        index.search(q[~done], K)


def compare_ms(prefilter: Int8Prefilter, index: faiss.Index, queries: np.ndarray, batch: int, rounds: int
               ) -> tuple[float, float]:
    """(prefilter, fp32 scan) median ms per call of `batch` queries; the two take turns, so that a busy spell on
    the machine hits them alike."""
    int8, fp32 = [], []
    for i in range(rounds):
        q = queries[i:i + batch]
        t0 = time.perf_counter()
        prefiltered_search(prefilter, index, q)
        t1 = time.perf_counter()
        index.search(q, K)
        int8.append(t1 - t0)
        fp32.append(time.perf_counter() - t1)
    return float(np.median(int8)) * 1e3, float(np.median(fp32)) * 1e3


def filter_of(index: faiss.Index) -> Int8Prefilter:
    """The prefilter of an IDMap2,Flat index at any size (of_index declines small ones)."""
    flat = faiss.downcast_index(index.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    return Int8Prefilter(vectors, faiss.vector_to_array(index.id_map), owner=index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs/index-prefilter.md"))
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    queries = clustered(QUERIES + max(BATCHES), seed=10_000)  # fresh: another seed, the same clusters
    spec = IndexSpec("flat", queries.shape[1])
    out = ["# Int8 prefilter: where it pays", "", f"- machine: {machine()}; one FAISS thread",
           "- command: `python bench/prefilter_bench.py`", "- data: `bench/index_bench.py` `clustered`, k=10; "
           "medians over 300 calls (batches: max(5, 300 / batch) calls), the prefilter and the fp32 scan taking "
           "turns", "",
           "## Collection size (one query)", "", "| n | prefilter ms | fp32 scan ms | fp32 / prefilter |",
           "| ---: | ---: | ---: | ---: |"]
    for n in SIZES:
        index = train_and_add(spec, clustered(n, seed=n), np.arange(n))
        int8, fp32 = compare_ms(filter_of(index), index, queries, 1, QUERIES)
        out.append(f"| {n:,} | {int8:.3f} | {fp32:.3f} | {fp32 / int8:.2f} |")
        print(out[-1], flush=True)
    out += ["", "## Batch size (50,000 vectors, ms per query)", "",
            "| queries per call | prefilter | fp32 scan | fp32 / prefilter |", "| ---: | ---: | ---: | ---: |"]
    prefilter = filter_of(index)  # the last size: 50,000
    for b in BATCHES:
        int8, fp32 = compare_ms(prefilter, index, queries, b, max(5, QUERIES // b))
        out.append(f"| {b} | {int8 / b:.3f} | {fp32 / b:.3f} | {fp32 / int8:.2f} |")
        print(out[-1], flush=True)
    out += ["", "## Load cost", "", "| n | build the filter s | resident growth B/vector |", "| ---: | ---: | ---: |"]
    for n in (1_000_000,):  # large enough for the allocator's noise to vanish
        index = train_and_add(spec, clustered(n, seed=n), np.arange(n))
        before, t0 = rss_bytes(), time.perf_counter()
        prefilter = Int8Prefilter.of_index(index)
        seconds, grown = time.perf_counter() - t0, rss_bytes() - before
        out.append(f"| {n:,} | {seconds:.3f} | {grown / n:.0f} |")
        print(out[-1], flush=True)
    Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
