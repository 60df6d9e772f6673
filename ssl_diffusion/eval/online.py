"""The online evaluators run during training (validation epochs), on the shared protocol code.

Accuracies are in percent, like every evaluator of the project. The online kNN uses the
offline evaluator (``KNNEvaluator``) at one k (``eval.knn.report_k``, DINO's 20 by default,
capped at the bank size) on the torch backend.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ssl_diffusion.eval.accuracy import topk_accuracy as _topk_percent
from ssl_diffusion.eval.config import KNNConfig
from ssl_diffusion.eval.knn import KNNEvaluator


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent of class scores (N, C) against labels (N,)."""
    acc = _topk_percent(logits.float().cpu(), labels.cpu(), ks)
    return [acc[k] for k in ks]


def knn_settings(knn_cfg: KNNConfig | None = None) -> tuple[int, float]:
    """The (k, T) of the online kNN."""
    cfg = knn_cfg if knn_cfg is not None else KNNConfig()
    return cfg.report_k, cfg.temperature


def online_knn(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor,
               num_classes: int, knn_cfg: KNNConfig | None = None) -> dict[str, float]:
    """DINO weighted kNN of val queries against the bank (top-1/top-5 in percent)."""
    base = knn_cfg if knn_cfg is not None else KNNConfig()
    k = min(base.report_k, bank.shape[0])
    cfg = dataclasses.replace(base, k=[k], report_k=k, backend="torch")
    out = KNNEvaluator(cfg).evaluate(bank.float().cpu(), bank_labels.cpu(), queries.float().cpu(),
                                     query_labels.cpu(), num_classes)
    return {"knn_top1": out["knn_top1"], "knn_top5": out["knn_top5"]}
