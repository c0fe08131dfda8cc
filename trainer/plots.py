"""Pictures in the run folder: training curves and a grid of queries with their nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402


def plot_curves(rows: list[dict], path: str | Path) -> None:
    """Loss and kNN top-1 per epoch (rows from log.jsonl)."""
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(epochs, [r["loss"] for r in rows], marker=".")
    ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    knn = [(r["epoch"], r["knn_top1"]) for r in rows if r.get("knn_top1") is not None]
    if knn:
        ax[1].plot(*zip(*knn, strict=True), marker=".", color="tab:green")
    ax[1].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="weighted kNN monitor")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def neighbour_grid(queries: list[Image.Image], neighbours: list[list[Image.Image]], path: str | Path,
                   correct: list[list[bool]] | None = None, cell: int = 64, border: int = 4) -> None:
    """One row per query: the query, a gap, then its neighbours (green / red border when labels exist)."""
    cols = 1 + max(len(n) for n in neighbours)
    gap = cell // 4
    grid = Image.new("RGB", (cols * (cell + border) + gap, len(queries) * (cell + border)), "white")
    for r, (q, row) in enumerate(zip(queries, neighbours, strict=True)):
        y = r * (cell + border)
        grid.paste(ImageOps.fit(q, (cell, cell)), (0, y))
        for c, im in enumerate(row):
            tile = ImageOps.fit(im, (cell - 2 * border, cell - 2 * border))
            if correct is not None:
                colour = (40, 170, 60) if correct[r][c] else (210, 40, 40)
                tile = ImageOps.expand(tile, border=border, fill=colour)
            else:
                tile = ImageOps.fit(im, (cell, cell))
            grid.paste(tile, ((c + 1) * (cell + border) + gap, y))
    grid.save(path)


def collection_map(embeddings: np.ndarray, labels: np.ndarray | None, classes: list[str],
                   path: str | Path, max_points: int = 5000, seed: int = 0) -> None:
    """A 2-D PCA map of the collection's embeddings, coloured by label when there are labels."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(embeddings))[:max_points]
    x = embeddings[pick] - embeddings[pick].mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T  # P x 2
    fig, ax = plt.subplots(figsize=(6, 6))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5)
    else:
        for c, name in enumerate(classes):
            sel = labels[pick] == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.5, label=name)
        ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set(title="collection map (PCA of embeddings)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
