"""Typed defaults of the classic SSL baselines (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al. 2020, arXiv 2002.05709); CIFAR values from solo-learn's recipe."""

    proj_hidden_dim: int = 2048  # projection-head hidden width
    proj_output_dim: int = 256  # projection-head output width
    temperature: float = 0.2  # NT-Xent temperature (0.2 for CIFAR in solo-learn)


@dataclass
class DINOConfig:
    """DINO (Caron et al. 2021, arXiv 2104.14294); small-data values from solo-learn/lightly."""

    hidden_dim: int = 2048  # head MLP width
    bottleneck_dim: int = 256  # head bottleneck before the weight-normalised last layer
    output_dim: int = 4096  # number of prototypes (65536 on ImageNet)
    norm_last_layer: bool = True  # weight-normalised last layer with frozen norm
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # final teacher temperature
    warmup_teacher_temp: float = 0.04  # initial teacher temperature
    warmup_teacher_temp_epochs: int = 0  # linear teacher-temperature warm-up (epochs)
    momentum_start: float = 0.996  # teacher EMA momentum, cosine-scheduled to momentum_end
    momentum_end: float = 1.0
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 0  # keep the last layer frozen for the first N steps


@dataclass
class DDAEConfig:
    """Diffusion-model SSL (DDAE, Xiang et al. ICCV 2023; DDAE++, arXiv 2505.10999)."""

    class_conditional: bool = False  # feed labels (with dropout, for CFG); SSL default: off
    label_dropout: float = 0.1  # probability of the null label when class-conditional [EXT-CODE]
    augment: bool = False  # EDM geometric augmentation of the diffusion input, its 9-d vector
    # fed to the network (DDAE EDM_ddpmpp_aug; `augment.*` knobs) [DDAE-CODE]
    online_feats_every: int = 1  # compute EMA features for the online linear probe every N steps


@dataclass
class ContrastiveConfig:
    """DDAE++ contrastive self-distillation (spec §3; MoCo v3 form) — weight 0 = off."""

    weight: float = 0.0  # lambda of the contrastive term [UNK]
    warmup_steps: int = 0  # linear lambda ramp from 0 (the SC feature is meaningless at init) [INF]
    temperature: float = 0.2  # InfoNCE tau; MoCo v3 CIFAR value in solo-learn [UNK]
    student_sigma: float = 0.06  # distillation noise level (VE sigma) of the student views [UNK]
    teacher_sigma: float | None = None  # teacher views' noise level; None = student_sigma [INF]
    teacher: Literal["momentum", "ema"] = "momentum"  # own momentum copy, or the sampling EMA
    # BatchNorm of the teacher (projector; any BN in the net): batch statistics as MoCo v3's
    # momentum encoder (train-mode BN, still no gradients) | running = statistics copied from
    # the student (eval mode; the behaviour before issue 12)
    teacher_bn: Literal["batch", "running"] = "batch"
    momentum_start: float = 0.99  # teacher momentum, cosine-scheduled to momentum_end (MoCo v3)
    momentum_end: float = 1.0
    proj_hidden_dim: int = 2048  # projector MLP width (MoCo v3: 4096; scaled down) [INF]
    proj_output_dim: int = 256  # projector/predictor output width (MoCo v3: 256)
    pred_hidden_dim: int = 2048  # predictor MLP width [INF]
    # Per-transform probability of the views' geometric augmentation [UNK]; 0.12 = EDM's CIFAR-10
    # value, chosen on digits validation over 0.5 (better val kNN and no-aug val diffusion loss;
    # docs/selfcond_defaults.md). The views are also the diffusion loss's training images.
    aug_p: float = 0.12
    feature: Literal["pooled", "signal"] = "pooled"  # z (pooled source layer) or s (after SC MLP)
    shared_pass: bool = False  # reuse the diffusion pass's z (random sigma) instead of a pass at
    # the distillation noise level truncated after the source layer [UNK]
