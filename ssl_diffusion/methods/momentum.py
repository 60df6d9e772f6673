"""Momentum teachers: the one teacher-momentum schedule and update shared by every method.

DINO (Caron et al. 2021) and DDAE++ contrastive self-distillation (MoCo v3 form, Chen et al.
2021) both keep a teacher that follows the student as ``teacher <- m * teacher + (1 - m) *
student``, with ``m`` rising from ``start`` to ``end`` on a half cosine over the run (BYOL/DINO
schedule). A method declares its (student, teacher) pairs and range through the ``SSLMethod``
contract (``momentum_pairs``, ``momentum_range``); the base class applies this module once per
step, before the loss, so no method carries its own copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def teacher_momentum(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine ramp from ``start`` (step 0) to ``end`` (step ``total - 1`` and later).

    Equals lightly's ``cosine_schedule`` (the value DINO and BYOL use); steps past the
    schedule keep the end value, so an extended run keeps the schedule it started with.
    """
    if total <= 1 or step >= total - 1:
        return float(end)
    return float(end - (end - start) * (math.cos(math.pi * step / (total - 1)) + 1) / 2)


@torch.no_grad()
def momentum_update(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` on parameters; buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - m)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


__all__ = ["momentum_update", "teacher_momentum"]
