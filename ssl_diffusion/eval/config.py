"""Typed configs of the feature evaluators (kNN and linear probe); torch-free.

The lead composes these into the root config; recipes override them as ``knn.<field>`` and
``linear.<field>``. Validation that needs the data (k versus bank size, ...) happens in the
evaluators, which raise ``UserError`` one-liners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class KNNConfig:
    """Weighted kNN on frozen features (DINO ``eval_knn.py`` protocol, Caron et al. 2021)."""

    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])  # neighbour counts, all from one search (DINO)
    report_k: int = 20  # k behind the headline knn_top1/knn_top5; must be in `k` (DINO paper reports 20-NN)
    temperature: float = 0.07  # vote weight exp(cos_sim / T) (DINO eval_knn)
    backend: Literal["auto", "faiss", "torch"] = "auto"  # auto: torch for flat (measured faster, benchmarks/README.md), faiss for ivf
    index: Literal["flat", "ivf"] = "flat"  # flat: exact search; ivf: approximate faiss IVF for banks too large to scan
    nlist: int = 1024  # ivf: k-means cells (faiss guide: ~4*sqrt(N)); clamped to bank_size // 39
    nprobe: int = 32  # ivf: cells scanned per query (recall/speed knob)
    chunk_size: int | None = None  # queries per similarity block; None = derived from max_memory_mb and bank size
    max_memory_mb: int = 256  # MiB bound of one float32 (queries x bank rows) similarity block (dino issue #161)
    normalize: bool = True  # L2-normalise features so inner product = cosine similarity (DINO)


@dataclass
class LinearConfig:
    """Linear probe on frozen features: BatchNorm1d(affine=False) + Linear (MAE ``main_linprobe``).

    MAE trains on ImageNet-1k with LARS, base lr 0.1 (lr = 0.1 * 16384 / 256 = 6.4), weight decay 0,
    batch 16384, 90 epochs, 10 warm-up epochs. A 16384 batch leaves only ~3 steps per epoch on a
    50k-image dataset, so the defaults keep MAE's schedule (90 epochs, 10 warm-up, wd 0, base lr
    0.1 scaled by batch/256) but use SGD with momentum and batch 256 (~200 steps/epoch on CIFAR);
    set ``optimizer=lars batch_size=16384`` for the ImageNet recipe.
    """

    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"  # sgd/lars: momentum SGD (lars adds layer-wise trust ratio, MAE); adamw
    lr: float = 0.1  # base lr per 256 samples; actual lr = lr * batch_size / 256 (MAE blr convention)
    momentum: float = 0.9  # sgd/lars momentum; adamw beta1 (MAE: 0.9)
    weight_decay: float = 0.0  # MAE linprobe: 0 (the BN in front already fixes the feature scale)
    epochs: int = 90  # passes over the training features (MAE: 90)
    batch_size: int = 256  # samples per step; inferred for small data (MAE: 16384 on ImageNet-1k)
    warmup_epochs: int = 10  # linear warm-up, then half-cosine to 0 (MAE: 10)
    seed: int = 0  # seeds head init and shuffling; same seed + same features = same result
