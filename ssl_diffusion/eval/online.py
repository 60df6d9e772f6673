"""Small helpers for the online evaluators run during training (validation epochs)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies (fractions) of class scores (N, C) against labels (N,)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (N, k_max)
    hits = top == labels[:, None]
    return [float(hits[:, : min(k, k_max)].any(1).float().mean()) for k in ks]


def knn_settings(knn_cfg: Any = None) -> tuple[int, float]:
    """The (k, T) of the online kNN: k=20 (DINO's headline k) if configured, else the first k."""
    if knn_cfg is None:
        return 20, 0.07
    ks = list(knn_cfg.k)
    return (20 if 20 in ks else ks[0]), knn_cfg.temperature


def online_knn(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor,
               num_classes: int, knn_cfg: Any = None) -> dict[str, float]:
    """DINO weighted kNN (k=20, T=0.07 unless configured) of val queries against the bank."""
    k, temperature = knn_settings(knn_cfg)
    k = min(k, bank.shape[0])
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    queries = torch.nn.functional.normalize(queries.float(), dim=1)
    sims, idx = (queries @ bank.T).topk(k, dim=1)  # (Q, k)
    weights = (sims / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], weights)
    top1, top5 = topk_accuracy(votes, query_labels, (1, 5))
    return {"knn_top1": top1, "knn_top5": top5}
