"""Label validation and top-k accuracy shared by the kNN and linear-probe evaluators."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssl_diffusion.errors import UserError


def as_labels(y: Tensor | np.ndarray, n: int, num_classes: int, name: str) -> Tensor:
    """(n,) int64 labels in [0, num_classes), or a UserError naming ``name``."""
    t = torch.as_tensor(y)
    if t.ndim != 1 or t.shape[0] != n:
        raise UserError(
            f"{name} must have shape ({n},) to match its features, got {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise UserError(f"{name} must be integer class ids, got dtype {t.dtype}")
    t = t.long()
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_classes:
        raise UserError(
            f"{name} span [{lo}, {hi}] but num_classes={num_classes}; labels must lie in "
            f"[0, {num_classes - 1}] (pass the dataset's class count)"
        )
    return t


def topk_accuracy(
    scores: Tensor, labels: Tensor, topk: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Percent of rows whose label is among the ``t`` best-scored classes, for each t in ``topk``.

    Equal scores rank the lower class index first (stable sort), so results are deterministic;
    t is capped at the number of classes.
    """
    order = scores.argsort(dim=1, descending=True, stable=True)  # (Q, C)
    hit = order == labels.to(order.device)[:, None]  # (Q, C)
    return {
        t: 100.0 * hit[:, : min(t, scores.shape[1])].any(dim=1).double().mean().item() for t in topk
    }
