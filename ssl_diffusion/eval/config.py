"""Typed configs of the feature evaluators (kNN and linear probe); torch-free.

The lead composes these into the root config; recipes override them as ``knn.<field>`` and
``linear.<field>``. Validation that needs the data (k versus bank size, ...) happens in the
evaluators, which raise ``UserError`` one-liners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssl_diffusion.errors import UserError, did_you_mean

LINEAR_OPTIMIZERS = ("sgd", "lars", "adamw")


@dataclass
class KNNConfig:
    """Weighted kNN on frozen features (DINO ``eval_knn.py`` protocol, Caron et al. 2021).

    ``backend=auto`` picks torch for flat search (2.3-8x faster than faiss-cpu flat search on the
    dev CPU, benchmarks/README.md) and faiss for IVF. ``max_memory_mb`` bounds one float32
    (query chunk x bank chunk) similarity block, so a 1M-row bank never materialises all its
    similarities at once (dino issue #161).
    """

    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])  # neighbours (DINO)
    report_k: int = 20  # k of the headline knn_top1/top5; must be in `k` (DINO paper: 20-NN)
    temperature: float = 0.07  # T of the vote weight exp(cos_sim / T) (DINO eval_knn)
    backend: Literal["auto", "faiss", "torch"] = "auto"  # auto: torch for flat, faiss for ivf
    index: Literal["flat", "ivf"] = "flat"  # flat: exact; ivf: approximate faiss IVF (huge banks)
    nlist: int = 1024  # ivf k-means cells (faiss: ~4*sqrt(N)); clamped to bank_size // 39
    nprobe: int = 32  # ivf cells scanned per query (recall/speed knob)
    chunk_size: int | None = None  # queries per similarity block; None = from max_memory_mb
    max_memory_mb: int = 256  # MiB bound of one float32 similarity block (queries x bank rows)
    normalize: bool = True  # L2-normalise features: inner product = cosine similarity (DINO)

    def validate(self) -> None:
        """Raise a UserError one-liner for an unusable kNN protocol."""
        if not self.k or any(k < 1 for k in self.k):
            raise UserError(
                f"eval.knn.k={self.k} must be a non-empty list of positive ints, e.g. [10, 20, 100, 200]"
            )
        if self.report_k not in self.k:
            raise UserError(
                f"eval.knn.report_k={self.report_k} is not in eval.knn.k={self.k}; pick one of {self.k}"
            )
        if not self.temperature > 0:
            raise UserError(f"eval.knn.temperature={self.temperature} must be > 0 (DINO: 0.07)")
        if self.nlist < 1 or self.nprobe < 1:
            raise UserError(f"eval.knn.nlist={self.nlist} and eval.knn.nprobe={self.nprobe} must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise UserError(
                f"eval.knn.chunk_size={self.chunk_size} must be >= 1 or null (derived from memory)"
            )
        if self.max_memory_mb < 1:
            raise UserError(f"eval.knn.max_memory_mb={self.max_memory_mb} must be >= 1, e.g. 256")


@dataclass
class LinearConfig:
    """Linear probe on frozen features: BatchNorm1d(affine=False) + Linear (MAE ``main_linprobe``).

    MAE trains on ImageNet-1k with LARS, base lr 0.1 (lr = 0.1 * 16384 / 256 = 6.4), weight decay
    0, batch 16384, 90 epochs, 10 warm-up epochs. A 16384 batch leaves ~3 steps per epoch on a
    50k-image dataset, so the defaults keep MAE's schedule (90 epochs, 10 warm-up, wd 0, base lr
    0.1 scaled by batch/256) with momentum SGD at batch 256 (~195 steps/epoch on CIFAR; measured
    ~0.3 s/epoch, so ~30 s in all, for 50k x 768 features on one CPU core). For ImageNet use
    ``optimizer=lars batch_size=16384``: LARS steps are 0.001 x the weight norm and need that lr.
    """

    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"  # momentum SGD; lars: + trust ratio (MAE)
    lr: float = 0.1  # base lr per 256 samples: lr * batch_size / 256 is used (MAE blr)
    momentum: float = 0.9  # sgd/lars momentum; adamw beta1 (MAE: 0.9)
    weight_decay: float = 0.0  # on the weight only, never the bias (MAE linprobe: 0)
    epochs: int = 90  # passes over the training features (MAE: 90)
    batch_size: int = 256  # samples per step; last partial batch dropped (MAE: 16384, ImageNet)
    warmup_epochs: int = 10  # linear warm-up, then half-cosine to 0 per step (MAE: 10)
    seed: int = 0  # seeds head init and shuffling: same seed + features = same result

    def validate(self) -> None:
        """Raise a UserError one-liner for an unusable linear-probe protocol."""
        if self.optimizer not in LINEAR_OPTIMIZERS:
            raise UserError(
                f"unknown eval.linear.optimizer `{self.optimizer}`; choose one of "
                f"{', '.join(LINEAR_OPTIMIZERS)}{did_you_mean(self.optimizer, LINEAR_OPTIMIZERS)}"
            )
        if not self.lr > 0 or not self.weight_decay >= 0 or not 0 <= self.momentum < 1:
            raise UserError(
                f"eval.linear.lr={self.lr} must be > 0, eval.linear.weight_decay={self.weight_decay} >= 0 "
                f"and eval.linear.momentum={self.momentum} in [0, 1)"
            )
        if self.epochs < 1 or self.batch_size < 2:
            raise UserError(
                f"eval.linear.epochs={self.epochs} must be >= 1 and eval.linear.batch_size="
                f"{self.batch_size} >= 2"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(
                f"eval.linear.warmup_epochs={self.warmup_epochs} must lie in [0, eval.linear.epochs="
                f"{self.epochs}]"
            )
        if not 0 <= self.seed < 2**32:
            raise UserError(f"eval.linear.seed={self.seed} must be a seed in [0, 2**32 - 1]")
