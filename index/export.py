"""Reading a trainer export (docs/export-format.md) and checking that it is whole and consistent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EmptyCollectionError, ExportError

EXPORT_FORMAT = 1
EXPORT_FILES = ("embeddings.npy", "ids.npy", "items.jsonl", "model.pt", "preprocess.json", "export.json")
MODEL_FILES = ("model.pt", "preprocess.json")  # what a version needs to embed a query like the collection
UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed for an L2-normalised row


@dataclass
class Export:
    directory: Path
    embeddings: np.ndarray  # N x D float32, unit rows
    ids: np.ndarray  # N int64, unique
    items: list[dict]  # N rows {"id", "path", "label", ...}, in row order
    meta: dict  # export.json

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def read_export(directory: str | Path) -> Export:
    """Load an export directory; ExportError / EmptyCollectionError say what is wrong with it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"export directory not found: {directory}")
    missing = [f for f in EXPORT_FILES if not (directory / f).is_file()]
    if missing:
        raise ExportError(f"export {directory} lacks {', '.join(missing)}")
    try:
        meta = json.loads((directory / "export.json").read_text())
        embeddings = np.load(directory / "embeddings.npy", allow_pickle=False)
        ids = np.load(directory / "ids.npy", allow_pickle=False)
        with open(directory / "items.jsonl") as fh:
            items = [json.loads(line) for line in fh if line.strip()]
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        raise ExportError(f"export {directory} is unreadable: {e}") from e
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"export {directory} has format {meta.get('format')!r}, expected {EXPORT_FORMAT}")
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise ExportError(f"embeddings.npy must be float32 [N, D], got {embeddings.dtype} {embeddings.shape}")
    n, dim = embeddings.shape
    if n == 0:
        raise EmptyCollectionError(f"export {directory} holds no images: there is nothing to index")
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or len(np.unique(ids)) != n:
        raise ExportError(f"ids.npy must hold {n} unique integers, got {ids.dtype} {ids.shape}")
    try:
        aligned = len(items) == n and all(int(r["id"]) == int(i) and "path" in r
                                          for r, i in zip(items, ids, strict=True))
    except (KeyError, TypeError, ValueError):
        aligned = False
    if not aligned:
        raise ExportError(f"items.jsonl must list the {n} ids of ids.npy, with their paths, "
                          "in the same order")
    if meta.get("dim", dim) != dim:
        raise ExportError(f"export.json says dim={meta.get('dim')} but embeddings have {dim} columns")
    if not np.isfinite(embeddings).all():
        raise ExportError("embeddings.npy contains NaN or infinite values")
    norms = np.linalg.norm(embeddings, axis=1)  # N
    if np.abs(norms - 1).max() > UNIT_TOLERANCE:
        raise ExportError("embeddings.npy rows are not L2-normalised")
    return Export(directory, embeddings, ids.astype(np.int64), items, meta)
