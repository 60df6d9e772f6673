"""``FeatureSet`` (the features of one split) and the rank-zero test shared by the feature caches
(``features.FeatureCache`` and ``feature_shards.ShardedFeatureCache``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class FeatureSet:
    """Features of one split."""

    feats: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    meta: dict[str, Any] = field(default_factory=dict)  # split, spec, checkpoint, cache key
    from_cache: bool = False  # loaded from disk instead of computed

    def __len__(self) -> int:
        return len(self.labels)


def is_rank_zero() -> bool:
    """False on the non-zero ranks of an initialised ``torch.distributed`` group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


__all__ = ["FeatureSet", "is_rank_zero"]
