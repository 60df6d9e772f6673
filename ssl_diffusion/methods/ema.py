"""Exponential moving average of a module's weights (kept as a submodule, so it is checkpointed),
frozen copies, and the BatchNorm mode of momentum teachers (MoCo v3: batch statistics)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def clone_frozen(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode (EMA copies, momentum teachers)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.eval()


@contextmanager
def batchnorm_batch_stats(*modules: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the BatchNorm layers of frozen ``modules`` on batch statistics inside the block.

    MoCo v3 (Chen, Xie & He 2021) keeps its momentum encoder in train mode, so its BatchNorm
    normalises with the current batch's statistics. Only BatchNorm layers switch (dropout and
    the rest keep their mode); every mode is restored on exit. Their running statistics are
    updated meanwhile but never read (``methods.momentum.momentum_update`` copies the
    student's buffers over them each step).
    """
    bns = [m for mod in modules for m in mod.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    modes = [m.training for m in bns]
    for m in bns:
        m.train()
    try:
        yield
    finally:
        for m, mode in zip(bns, modes):
            m.train(mode)


class EMA(nn.Module):
    """EMA copy of ``module``. With ``warmup`` the decay ramps as min(decay, (1+n)/(10+n)),
    so early averages are not dominated by the random initialisation (as ema_pytorch/timm)."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        super().__init__()
        self.module = clone_frozen(module)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = list(self.module.parameters())
        src_params = list(source.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in src_params], 1.0 - decay)
        for b_ema, b_src in zip(self.module.buffers(), source.buffers()):
            b_ema.copy_(b_src)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        super().train(mode)
        self.module.eval()  # the average is only ever used for inference
        return self
