"""Weighted k-nearest-neighbour classification of frozen features (DINO ``eval_knn.py`` protocol).

Caron et al. 2021 (DINO), following Wu et al. 2018: L2-normalise features, find the k most
cosine-similar training features of each test feature, and let every neighbour vote for its class
with weight ``exp(sim / T)`` (T = 0.07); the class scores rank the predictions (top-1 / top-5).
All k in ``KNNConfig.k`` come from one search for the largest k (the neighbour lists are sorted, so
a smaller k is a prefix). The search (:mod:`ssl_diffusion.eval.neighbors`) is exact and returns
identical results for the torch and faiss backends and for every chunking.

Evaluators take features, not models: extract them once (``eval/features.py``) and pass tensors
or arrays.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.accuracy import as_labels, topk_accuracy
from ssl_diffusion.eval.config import KNNConfig
from ssl_diffusion.eval.neighbors import (
    FaissIndex,
    NeighborResult,
    as_features,
    build_index,
    knn_search,
    resolve_backend,
)

__all__ = [
    "FaissIndex",
    "KNNEvaluator",
    "NeighborResult",
    "as_labels",
    "build_index",
    "knn_search",
    "topk_accuracy",
    "weighted_knn_predict",
]


def weighted_knn_predict(
    neighbor_sims: Tensor, neighbor_labels: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """Class scores of a similarity-weighted vote (DINO eval_knn).

    Args:
        neighbor_sims: (Q, k) similarities of each query's neighbours.
        neighbor_labels: (Q, k) int64 class of each neighbour, in [0, num_classes).
        num_classes: C.
        temperature: T; neighbour weight = exp(sim / T).

    Returns:
        (Q, C) float64 scores. Each row is divided by exp(max_sim / T), which leaves the ranking
        unchanged and keeps exp() finite for unnormalised features.
    """
    sims = neighbor_sims.double()  # (Q, k)
    weights = ((sims - sims.max(dim=1, keepdim=True).values) / temperature).exp()  # (Q, k)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    return scores.scatter_add_(1, neighbor_labels.long(), weights)  # (Q, C)


class KNNEvaluator:
    """Weighted kNN top-1/top-5 accuracy of query features against a labelled bank."""

    def __init__(self, cfg: KNNConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else KNNConfig()
        self.cfg.validate()
        resolve_backend(self.cfg.backend, self.cfg.index)  # checks both choices and their combination

    def search(
        self, bank_feats: Tensor | np.ndarray, query_feats: Tensor | np.ndarray
    ) -> NeighborResult:
        """Neighbours for the largest k of the config."""
        cfg = self.cfg
        return knn_search(
            bank_feats,
            query_feats,
            max(cfg.k),
            backend=cfg.backend,
            index=cfg.index,
            normalize=cfg.normalize,
            nlist=cfg.nlist,
            nprobe=cfg.nprobe,
            chunk_size=cfg.chunk_size,
            max_memory_mb=cfg.max_memory_mb,
        )

    def evaluate(
        self,
        bank_feats: Tensor | np.ndarray,
        bank_labels: Tensor | np.ndarray,
        query_feats: Tensor | np.ndarray,
        query_labels: Tensor | np.ndarray,
        num_classes: int,
    ) -> dict:
        """Accuracies in percent for every k, plus the protocol that produced them.

        Returns:
            ``{"knn_top1", "knn_top5"}`` at ``report_k``, ``"knn_top1@k{k}"`` and
            ``"knn_top5@k{k}"`` for each k, and ``"protocol"`` (k list, T, resolved backend,
            index, sizes, exact-fallback count).
        """
        cfg = self.cfg
        if num_classes < 1:
            raise UserError(f"num_classes={num_classes} must be >= 1")
        bank = as_features(bank_feats, "bank features")
        queries = as_features(query_feats, "query features")
        bank_y = as_labels(bank_labels, bank.shape[0], num_classes, "bank labels")
        query_y = as_labels(query_labels, queries.shape[0], num_classes, "query labels")
        if max(cfg.k) > bank.shape[0]:
            raise UserError(
                f"knn.k={cfg.k} asks for {max(cfg.k)} neighbours but the bank has {bank.shape[0]} "
                f"rows; drop the larger k values or use a larger bank"
            )
        neighbors = self.search(bank, queries)
        sims = neighbors.similarities.cpu()  # (Q, kmax)
        idx = neighbors.indices.cpu()  # (Q, kmax)
        labels = bank_y.index_select(0, idx.reshape(-1)).view(idx.shape)  # (Q, kmax)
        out: dict = {}
        for k in cfg.k:
            scores = weighted_knn_predict(sims[:, :k], labels[:, :k], num_classes, cfg.temperature)
            acc = topk_accuracy(scores, query_y)
            out[f"knn_top1@k{k}"], out[f"knn_top5@k{k}"] = acc[1], acc[5]
            if k == cfg.report_k:  # per-query top-1 class (paired tests between two models)
                out["predictions"] = scores.argmax(dim=1).numpy().astype(np.int64)  # (Q,)
        out["knn_top1"] = out[f"knn_top1@k{cfg.report_k}"]
        out["knn_top5"] = out[f"knn_top5@k{cfg.report_k}"]
        out["protocol"] = {
            **asdict(cfg),
            "backend": resolve_backend(cfg.backend, cfg.index),
            "metric": "cosine" if cfg.normalize else "inner_product",
            "weighting": "exp(sim / temperature)",
            "units": "percent",
            "bank_size": bank.shape[0],
            "num_queries": queries.shape[0],
            "dim": bank.shape[1],
            "num_classes": num_classes,
            "num_exact_fallback": neighbors.num_exact_fallback,
        }
        return out
