"""Weighted kNN evaluation (Wu et al. 2018): votes exp(s/tau) of the k nearest bank entries, chunked."""

from __future__ import annotations

import torch


def topk_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 1024,
                    key_chunk: int = 262_144, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of unit queries (QxD) among unit keys (NxD) -> (sims QxK, ids QxK), chunked both ways.

    exclude_self: queries are keys[0:Q] (leave-one-out); the query's own row is never returned.
    """
    k = min(k, keys.shape[0] - int(exclude_self))
    out_s, out_i = [], []
    for q0 in range(0, queries.shape[0], chunk):
        q = queries[q0:q0 + chunk].to(keys.dtype)  # c x D
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=keys.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=keys.device)
        for k0 in range(0, keys.shape[0], key_chunk):
            s = q @ keys[k0:k0 + key_chunk].t()  # c x kc
            if exclude_self:
                rows = torch.arange(q.shape[0], device=keys.device)
                cols = rows + q0 - k0
                ok = (cols >= 0) & (cols < s.shape[1])
                s[rows[ok], cols[ok]] = float("-inf")
            ts, ti = s.topk(min(k, s.shape[1]), dim=1)
            best_s, pos = torch.cat([best_s, ts], 1).topk(min(k, best_s.shape[1] + ts.shape[1]), dim=1)
            best_i = torch.cat([best_i, ti + k0], 1).gather(1, pos)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


def weighted_knn_scores(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                        tau: float) -> torch.Tensor:
    """Class scores from the k neighbours: sum of exp(s/tau) per class. sims, labels: QxK -> QxC."""
    weights = (sims / tau).exp()  # Q x K
    scores = torch.zeros(sims.shape[0], num_classes, device=sims.device, dtype=weights.dtype)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_accuracy(queries: torch.Tensor, query_labels: torch.Tensor, keys: torch.Tensor,
                 key_labels: torch.Tensor, ks: tuple[int, ...] = (200,), tau: float = 0.07,
                 exclude_self: bool = False) -> dict[str, float]:
    """Top-1 / top-5 weighted kNN accuracy for every k in ks, plus 1-NN, in percent."""
    num_classes = int(max(key_labels.max(), query_labels.max())) + 1
    sims, ids = topk_neighbours(queries, keys, max(ks), exclude_self=exclude_self)  # Q x Kmax
    neighbour_labels = key_labels.to(ids.device)[ids]  # Q x Kmax
    y = query_labels.to(ids.device)
    out = {"nn1": 100.0 * (neighbour_labels[:, 0] == y).float().mean().item()}
    for k in ks:
        scores = weighted_knn_scores(sims[:, :k], neighbour_labels[:, :k], num_classes, tau)
        top_scores, top = scores.topk(min(5, num_classes), dim=1)  # Q x 5
        out[f"top1@{k}"] = 100.0 * (top[:, 0] == y).float().mean().item()
        hit5 = (top == y[:, None]) & (top_scores > 0)  # a class without votes is no prediction (k < 5)
        out[f"top5@{k}"] = 100.0 * hit5.any(1).float().mean().item()
    return out
