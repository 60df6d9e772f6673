"""Typed defaults of the classic SSL baselines (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


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
