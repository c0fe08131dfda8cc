"""`npid index ...`: build, list, publish, roll back, search and inspect index versions.

    npid index build runs/npid/export [--kind auto|flat|hnsw|ivf_flat|ivf_sq8|ivf_pq] [--no-publish]
    npid index list
    npid index publish v000003
    npid index rollback
    npid index search --image query.jpg [-k 10] [--min-score 0.5] [--version v000003]
    npid index search --id 123
    npid index stats [--version v000003]
    npid duplicates [--threshold 0.97] [--limit 50] [--version v000003]   # groups of near-duplicate images

Every action takes --store (default: $NPID_ARTIFACTS_DIR, else artifacts/index) and --json where it prints
results. Expected failures (missing or damaged version, dimension mismatch, empty collection, unreadable
image) print one line `error: ...` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .artifact import ArtifactStore, LoadedVersion, VersionInfo
from .config import GIB, KINDS, IndexConfig
from .duplicates import Group, KnnGraph, default_threshold, duplicate_groups, live_graph
from .errors import DimensionMismatchError, IndexStoreError
from .metadata import display_path
from .search import MAX_K, Hit

DEFAULT_STORE = "artifacts/index"
EmbedImage = Callable[[Path, str], np.ndarray]  # (version directory, image file) -> 1 x D
# (version, its k-NN graph) -> the duplicate threshold measured with the version's model, or None
EstimateThreshold = Callable[[LoadedVersion, KnnGraph], "dict | None"]
EXIT_ERROR = 2


def _store(args) -> ArtifactStore:
    return ArtifactStore(args.store, keep=args.keep)


def _clean_errors(func):
    """Expected failures become one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(args) -> int:
        try:
            return func(args) or 0
        except (IndexStoreError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper


def _emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


# ------------------------------------------------------------------------------------------ actions


@_clean_errors
def cmd_build(args) -> int:
    cfg = IndexConfig(kind=args.kind, exact_max=args.exact_max, memory_budget=int(args.memory_budget * GIB),
                      recall_target=args.recall_target, gpu=not args.no_gpu)
    store = _store(args)
    version = store.build(args.export, cfg, publish=not args.no_publish, collection_root=args.collection_root)
    m = store.manifest(version)
    index, tuning, counts = m["index"], m["index"]["tuning"], m["counts"]
    setting = "" if tuning["param"] is None else f", {tuning['param']}={tuning['value']}"
    state = f"staged (publish it with: npid index publish {version})" if args.no_publish else "published"
    print(f"{version}: {counts['vectors']} x {counts['dim']} vectors, {index['spec']['factory']}{setting}, "
          f"recall@10 {tuning['recall']:.3f}, built in {index['build_seconds']:.1f} s; {state}")
    return 0


@_clean_errors
def cmd_list(args) -> int:
    infos = _store(args).list()
    payload = [{"version": i.version, "current": i.current, "kind": i.kind, "problem": i.problem,
                "manifest": i.manifest} for i in infos]
    _emit(args, payload, format_versions(infos) if infos else f"no versions in {args.store}")
    return 0


@_clean_errors
def cmd_publish(args) -> int:
    _store(args).publish(args.version)
    print(f"current version: {args.version}")
    return 0


@_clean_errors
def cmd_rollback(args) -> int:
    store = _store(args)
    if args.to:
        store.publish(args.to)
        version = args.to
    else:
        version = store.rollback()
    print(f"current version: {version}")
    return 0


@_clean_errors
def cmd_search(args) -> int:
    if not 1 <= args.k <= MAX_K:
        raise ValueError(f"-k must be between 1 and {MAX_K}")
    lv = _store(args).load(args.version)
    image = getattr(args, "image", None)
    if image is not None:
        query, exclude = query_vector(lv, args.embed_image, image), None
    else:
        try:
            query, exclude = lv.searcher.vector(args.id), args.id
        except KeyError:
            raise IndexStoreError(f"id {args.id} is not in version {lv.version}") from None
    k = min(args.k + (exclude is not None), MAX_K)  # a search by id finds the item itself first: leave it out
    hits = [h for h in lv.searcher.search(query, k, args.min_score)[0] if h.id != exclude][: args.k]
    payload = {"version": lv.version, "query": {"image": image, "id": args.id},
               "hits": [{"rank": r, "score": h.score, **h.item.to_dict()} for r, h in enumerate(hits, 1)]}
    _emit(args, payload, format_hits(hits) if hits else "no results")
    return 0


@_clean_errors
def cmd_stats(args) -> int:
    store = _store(args)
    lv = store.load(args.version)
    payload = version_stats(lv, store.current_version())
    _emit(args, payload, "\n".join(f"{k:<18} {_text(v)}" for k, v in payload.items()))
    return 0


@_clean_errors
def cmd_duplicates(args) -> int:
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise ValueError("--threshold must be between -1 and 1")
    if args.limit < 0:
        raise ValueError("--limit must be >= 0")
    lv = _store(args).load(args.version)
    graph = live_graph(lv.searcher)
    if args.threshold is not None:
        threshold, source = args.threshold, "request"
    else:
        threshold, source = default_threshold(lv.manifest, graph, args.estimate and (lambda: args.estimate(lv, graph)))
    groups = duplicate_groups(graph, threshold)
    payload = {"version": lv.version, "threshold": threshold, "threshold_source": source,
               "total_groups": len(groups), "total_images": sum(g.size for g in groups),
               "groups": [group_dict(lv, g) for g in groups[: args.limit]]}
    _emit(args, payload, format_groups(payload))
    return 0


def group_dict(lv: LoadedVersion, group: Group) -> dict:
    items = [lv.searcher.metadata.get(int(i)) for i in group.ids]
    return {"size": group.size, "best_score": group.best,
            "members": [{"id": it.id, "score": float(s), "path": display_path(it.path), "label": it.label}
                        for it, s in zip(items, group.scores, strict=True)]}


def query_vector(lv: LoadedVersion, embed_image: EmbedImage, image: str) -> np.ndarray:
    """An image file embedded with the version's own model and preprocessing -> 1 x D, checked against the index."""
    try:
        vector = embed_image(lv.directory, image)  # 1 x D'
    except (RuntimeError, KeyError) as e:
        raise IndexStoreError(f"cannot load the model of {lv.version}: {e}") from e
    if vector.shape[1] != lv.dim:
        raise DimensionMismatchError(f"the model of {lv.version} embeds to {vector.shape[1]} dimensions, "
                                     f"its index holds {lv.dim}")
    return vector


# ------------------------------------------------------------------------------------------ output


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _metrics(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def format_versions(infos: list[VersionInfo]) -> str:
    """One row per version: kind (model: a training or re-index, kept `--keep` deep; update: an add, delete or
    compaction, kept apart), origin, created, size, model (SHA-256 prefix of model.pt), index, recall, quality
    figures (when the manifest has any) and training metrics."""
    rows = [("VERSION", "CREATED", "KIND", "ORIGIN", "VECTORS", "DIM", "MODEL", "INDEX", "RECALL@10", "QUALITY",
             "METRICS")]
    for i in infos:
        mark = "*" if i.current else ""
        if i.manifest is None:
            rows.append((i.version + mark, "DAMAGED", "-", "-", "-", "-", "-", "-", "-", "-", i.problem or ""))
            continue
        m = i.manifest
        tuning = m["index"]["tuning"]
        setting = "" if tuning["param"] is None else f" {tuning['param']}={tuning['value']}"
        rows.append((i.version + mark, m["created"], i.kind, m["origin"]["kind"], str(m["counts"]["vectors"]),
                     str(m["counts"]["dim"]), m["files"]["model.pt"]["sha256"][:12], m["index"]["spec"]["kind"]
                     + setting, f"{tuning['recall']:.3f}", _metrics(m.get("quality")),
                     _metrics((m.get("training") or {}).get("metrics"))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
                     for r in rows).rstrip()


def format_hits(hits: list[Hit]) -> str:
    lines = [f"{'RANK':>4}  {'ID':>8}  {'SCORE':>7}  {'LABEL':<12}  PATH"]
    for rank, h in enumerate(hits, 1):
        label = "-" if h.item.label is None else h.item.label
        lines.append(f"{rank:>4}  {h.id:>8}  {h.score:>7.4f}  {label:<12}  {display_path(h.item.path)}")
    return "\n".join(lines)


THRESHOLD_SOURCES = {"request": "given", "calibrated": "calibrated at publish",
                     "estimated": "estimated now with the version's model",
                     "nearest": "top 5% of nearest-neighbour cosines: no model measurement"}


def format_groups(payload: dict) -> str:
    lines = [f"{payload['version']}: {payload['total_groups']} groups of near duplicates "
             f"({payload['total_images']} images) at cosine >= {payload['threshold']:.4f} "
             f"({THRESHOLD_SOURCES[payload['threshold_source']]})"]
    for n, g in enumerate(payload["groups"], 1):
        lines.append(f"group {n}: {g['size']} images")
        lines += [f"  {m['score']:>9.5f}  {m['id']:>8}  {m['label'] or '-':<12}  {m['path']}" for m in g["members"]]
    if len(payload["groups"]) < payload["total_groups"]:
        lines.append(f"... {payload['total_groups'] - len(payload['groups'])} more groups (--limit)")
    return "\n".join(lines)


def version_stats(lv: LoadedVersion, current: str | None) -> dict:
    m = lv.manifest
    tuning = m["index"]["tuning"]
    disk = sum(f["bytes"] for f in m["files"].values())
    labels = lv.searcher.metadata.label_counts()
    return {
        "version": lv.version, "current": lv.version == current, "created": m["created"],
        "parent": m["parent"], "origin": m["origin"], "directory": str(lv.directory),
        "vectors": lv.searcher.ntotal, "dim": lv.dim, "index": m["index"]["spec"]["factory"],
        "search_setting": None if tuning["param"] is None else {tuning["param"]: tuning["value"]},
        "recall@10": tuning["recall"], "recall_target": tuning["target"],
        "recall_measured_on": m["index"]["recall_measured_on"] or lv.version,
        "build_seconds": m["index"]["build_seconds"],
        "estimated_ram_mib": round(m["index"]["estimated_bytes"] / 2**20, 1),
        "disk_mib": round(disk / 2**20, 1),
        "labels": labels, "metrics": (m.get("training") or {}).get("metrics"),
        "collection_root": m["collection_root"], "libraries": m["libraries"],
    }


# ------------------------------------------------------------------------------------------ parser


def register(subparsers, embed_image: EmbedImage | None = None, estimate: EstimateThreshold | None = None) -> None:
    """Add `index` and its actions, and `duplicates`, to the `npid` parser (service/cli.py).

    embed_image: how a query image file becomes a vector. The index knows no models: the service passes the
    trainer's embedding; without it, search takes --id only. estimate: the duplicate threshold of a version
    published without one, measured with its model (service/live/duplicates.py); without it, such a version's
    default is the top 1% of its nearest-neighbour cosines.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=os.environ.get("NPID_ARTIFACTS_DIR", DEFAULT_STORE),
                        help="artifact store root (default: $NPID_ARTIFACTS_DIR, else %(default)s)")
    common.add_argument("--keep", type=int, default=5, help="versions kept for rollback (default 5)")
    printing = argparse.ArgumentParser(add_help=False)
    printing.add_argument("--json", action="store_true", help="print JSON")

    p = subparsers.add_parser("index", help="build, publish, roll back and search index versions")
    sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", parents=[common], help="new version from a trainer export")
    b.add_argument("export", help="trainer export directory (docs/export-format.md)")
    b.add_argument("--kind", choices=KINDS, default="auto", help="index kind (default: by size and memory)")
    b.add_argument("--memory-budget", type=float, default=IndexConfig.memory_budget / GIB, metavar="GIB",
                   help="RAM the index may take, GiB (default %(default)s)")
    b.add_argument("--recall-target", type=float, default=IndexConfig.recall_target,
                   help="recall@10 an approximate index is tuned to (default %(default)s)")
    b.add_argument("--exact-max", type=int, default=IndexConfig.exact_max,
                   help="largest collection searched exactly under --kind auto (default %(default)s)")
    b.add_argument("--collection-root", help="image folder the export's paths are relative to "
                   "(default: the export's collection_root)")
    b.add_argument("--no-publish", action="store_true", help="write the version without making it current")
    b.add_argument("--no-gpu", action="store_true", help="build on the CPU even when faiss sees a GPU")
    b.set_defaults(func=cmd_build)

    lst = sub.add_parser("list", parents=[common, printing], help="versions with counts, metrics, recall")
    lst.set_defaults(func=cmd_list)

    pub = sub.add_parser("publish", parents=[common], help="make a version current")
    pub.add_argument("version")
    pub.set_defaults(func=cmd_publish)

    rb = sub.add_parser("rollback", parents=[common], help="make the previously current version current")
    rb.add_argument("--to", metavar="VERSION", help="roll back to this version instead")
    rb.set_defaults(func=cmd_rollback)

    s = sub.add_parser("search", parents=[common, printing], help="nearest neighbours of an image or an id")
    query = s.add_mutually_exclusive_group(required=True)
    if embed_image is not None:
        query.add_argument("--image", help="image file, embedded with the version's own model")
    query.add_argument("--id", type=int, help="an indexed item (left out of its own results)")
    s.add_argument("--version", help="version to search (default: current)")
    s.add_argument("-k", type=int, default=10, help=f"results, 1 to {MAX_K} (default %(default)s)")
    s.add_argument("--min-score", type=float, help="leave out results under this cosine similarity")
    s.set_defaults(func=cmd_search, embed_image=embed_image)

    st = sub.add_parser("stats", parents=[common, printing], help="one version in detail, verified")
    st.add_argument("--version", help="default: current")
    st.set_defaults(func=cmd_stats)

    d = subparsers.add_parser("duplicates", parents=[common, printing],
                              help="groups of near-duplicate images of a version (from its stored embeddings)",
                              description="Groups of near-duplicate images: each image linked to its nearest others "
                                          "(exact k-NN over the stored embeddings, whatever the index kind) with "
                                          "cosine >= the threshold, connected components, largest first.")
    d.add_argument("--version", help="default: current")
    d.add_argument("--threshold", type=float, help="cosine in [-1, 1] (default: the version's calibrated threshold)")
    d.add_argument("--limit", type=int, default=50, help="groups printed (default %(default)s)")
    d.set_defaults(func=cmd_duplicates, estimate=estimate)
