"""Evaluation of a run: the per-epoch kNN monitor, the final kNN + linear probe, and the pictures."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .data import ArrayImages, ImageFolder
from .embed import embed_dataset
from .knn import knn_accuracy, topk_neighbours
from .plots import collection_map, neighbour_grid
from .preprocess import Preprocess
from .probe import linear_probe
from .progress import Tick

log = logging.getLogger(__name__)

Dataset = ImageFolder | ArrayImages


def labels_of(ds: Dataset | None, classes_of: Dataset | None = None) -> torch.Tensor | None:
    """Label ids of ds, renumbered by class name into `classes_of`'s ids (an eval set vs the collection)."""
    if ds is None or ds.collection.labels is None:
        return None
    labels = torch.from_numpy(ds.collection.labels)
    if classes_of is None or classes_of.collection.classes == ds.collection.classes:
        return labels
    ref = {name: i for i, name in enumerate(classes_of.collection.classes)}
    missing = sorted(set(ds.collection.classes) - set(ref))
    if missing:
        raise ValueError(f"eval classes not in the collection: {', '.join(missing)}")
    return torch.tensor([ref[c] for c in ds.collection.classes])[labels]


def knn_monitor(encoder, bank: torch.Tensor, train_ds: Dataset, eval_ds: Dataset | None, pre: Preprocess,
                ks: tuple[int, ...], tau: float, device) -> dict[str, float] | None:
    """kNN against the memory bank: eval-set features when there is an eval set, else leave-one-out."""
    train_y = labels_of(train_ds)
    if train_y is None:
        return None
    if eval_ds is not None and labels_of(eval_ds) is not None:
        queries = embed_dataset(encoder, eval_ds, pre, device, progress=False)
        return knn_accuracy(queries, labels_of(eval_ds, train_ds), bank, train_y, ks, tau)
    return knn_accuracy(bank, train_y, bank, train_y, ks, tau, exclude_self=True)


def final_evaluation(encoder, train_ds: Dataset, eval_ds: Dataset | None, pre: Preprocess, ks, tau, device,
                     out: Path, seed: int, progress: bool, tick: Tick | None = None) -> tuple[torch.Tensor, dict]:
    """Recompute features with the eval transform; kNN, 1-NN, linear probe; pictures. -> (train feats, metrics).
    `tick` follows the embedding of the collection."""
    train_f = embed_dataset(encoder, train_ds, pre, device, progress=progress, tick=tick)  # N x D
    train_y = labels_of(train_ds)
    metrics: dict = {}
    eval_f = eval_y = None
    if eval_ds is not None:
        eval_f = embed_dataset(encoder, eval_ds, pre, device, progress=progress)
        eval_y = labels_of(eval_ds, train_ds)
    if train_y is not None:
        if eval_y is not None:
            metrics["knn"] = knn_accuracy(eval_f, eval_y, train_f, train_y, ks, tau)
            metrics["knn_protocol"] = "eval set vs collection"
            if torch.unique(train_y).numel() > 1:  # a classifier needs two classes to learn from
                metrics["linear_probe_top1"] = linear_probe(train_f.cpu().numpy(), train_y.numpy(),
                                                            eval_f.cpu().numpy(), eval_y.numpy())
        else:
            metrics["knn"] = knn_accuracy(train_f, train_y, train_f, train_y, ks, tau, exclude_self=True)
            metrics["knn_protocol"] = "leave-one-out on the collection"
            split = np.random.default_rng(seed).random(len(train_y)) < 0.8
            x, y = train_f.cpu().numpy(), train_y.numpy()
            if 0 < split.sum() < len(split) and np.unique(y[split]).size > 1:  # e.g. one first-level folder
                metrics["linear_probe_top1"] = linear_probe(x[split], y[split], x[~split], y[~split])
                metrics["linear_probe_protocol"] = "80/20 split of the collection"
    draw_neighbours(train_ds, train_f, eval_ds, eval_f, out / "neighbours.png", seed)
    collection_map(train_f.cpu().numpy(), None if train_y is None else train_y.numpy(),
                   train_ds.collection.classes, out / "collection_map.png", seed=seed)
    return train_f, metrics


def draw_neighbours(train_ds: Dataset, train_f: torch.Tensor, eval_ds: Dataset | None,
                    eval_f: torch.Tensor | None, path: Path, seed: int, rows: int = 8, k: int = 10) -> None:
    """A grid of queries (eval set if any, else the collection) with their top-k collection neighbours."""
    query_ds, query_f = (eval_ds, eval_f) if eval_ds is not None else (train_ds, train_f)
    pick = np.random.default_rng(seed).permutation(len(query_ds))[:rows]
    sims, ids = topk_neighbours(query_f[pick], train_f, k + 1, exclude_self=False)
    same = query_ds is train_ds
    neighbours, correct = [], []
    qy, ty = labels_of(query_ds, train_ds), labels_of(train_ds)
    for r, q in enumerate(pick):
        row = [int(i) for i in ids[r] if not (same and int(i) == int(q))][:k]
        neighbours.append([train_ds.load(i) for i in row])
        if qy is not None and ty is not None:
            correct.append([bool(ty[i] == qy[int(q)]) for i in row])
    neighbour_grid([query_ds.load(int(q)) for q in pick], neighbours, path, correct or None)
