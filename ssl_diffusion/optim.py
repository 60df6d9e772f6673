"""LARS, the one layer-wise adaptive optimiser of the project (pretraining and linear probe).

Layer-wise adaptive rate scaling (You et al. 2017, arXiv 1708.03888) as used by MAE's linear
probe: matrices get the trust ratio ``eta * |p| / |g + wd * p|`` before momentum; vectors (biases,
norm weights) take plain momentum SGD without weight decay.

Why not lightly's ``LARS``: it applies the trust ratio only where ``weight_decay != 0``, and MAE's
probe runs LARS with weight decay 0, where lightly's optimiser reduces to momentum SGD (checked in
lightly 1.6's source); and the air-gapped GPU node (benchmarks/gpu_compare.py) has no lightly.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as used by MAE's linear probe.

    Matrices get the trust ratio ``eta * |p| / |g + wd * p|`` before momentum; vectors (bias) take
    plain momentum SGD without weight decay.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta}
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = p.norm(), update.norm()
                    trust = torch.where(
                        (p_norm > 0) & (u_norm > 0),
                        group["eta"] * p_norm / u_norm,
                        torch.ones_like(p_norm),
                    )
                    update = update.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = update.clone()
                else:
                    buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
