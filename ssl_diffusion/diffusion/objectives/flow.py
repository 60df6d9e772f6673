"""Rectified-flow objective with the linear path and velocity prediction (LightningDiT / SiT).

``x_t = (1 - t) x0 + t eps`` (t = 1 is pure noise), the network predicts ``v = eps - x0`` from
``(x_t, c_noise = t)``, and ``x0 = x_t - t v``. In VE terms ``sigma = t / (1 - t)`` and
``x_t = x_ve / (1 + sigma)``. Training t is logit-normal (SD3, LightningDiT "lognorm"), which
is exactly ``ln(sigma) ~ N(t_mean, t_std^2)``, so sigma is drawn directly and t never rounds
to 1. An optional cosine term ``1 - cos(v_hat, v)`` over channels (LightningDiT) can be added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_diffusion.diffusion.config import DiffusionConfig
from ssl_diffusion.diffusion.noise import flow_sigma_to_t, flow_t_to_sigma
from ssl_diffusion.diffusion.objectives.base import NetInput, Objective, bcast, mean_flat
from ssl_diffusion.diffusion.samplers import flow_sigmas


class FlowObjective(Objective):
    name = "flow"

    def __init__(self, cfg: DiffusionConfig):
        super().__init__(cfg)
        self.sigma_min = 0.002 if cfg.sigma_min is None else cfg.sigma_min  # t ~ 0.002
        # t = 0.999; t = 1 (pure noise) would be sigma = inf
        self.sigma_max = 999.0 if cfg.sigma_max is None else cfg.sigma_max

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        return flow_t_to_sigma(t)

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        return flow_sigma_to_t(sigma)

    def _default_train_sigma(self, n: int, generator: torch.Generator | None) -> Tensor:
        gdev = generator.device if generator is not None else None
        z = torch.randn(n, generator=generator, device=gdev)
        return (self.cfg.t_mean + self.cfg.t_std * z).exp()  # logit(t) = ln(sigma)

    def sampling_sigmas(self, steps: int) -> Tensor:
        return flow_sigmas(steps, self.sigma_max)

    def net_inputs(self, x_ve: Tensor, sigma: Tensor) -> NetInput:
        return NetInput(x=x_ve / bcast(1.0 + sigma, x_ve), c_noise=flow_sigma_to_t(sigma))

    def pred_to_x0(self, x_ve: Tensor, sigma: Tensor, pred: Tensor) -> Tensor:
        t = bcast(flow_sigma_to_t(sigma), x_ve)
        return x_ve / bcast(1.0 + sigma, x_ve) - t * pred  # x0 = x_t - t v

    def train_target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise - x0  # v = d x_t / dt

    def extra_loss_weights(self) -> dict[str, float]:
        w = self.cfg.cosine_loss_weight
        return {"loss_cosine": w} if w > 0 else {}

    def diffusion_loss(
        self, pred: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor
    ) -> dict[str, Tensor]:
        v = noise - x0
        terms = {"loss_diffusion": mean_flat((pred - v) ** 2)}
        if self.cfg.cosine_loss_weight > 0:  # per-pixel direction of v over channels
            terms["loss_cosine"] = mean_flat(1.0 - F.cosine_similarity(pred, v, dim=1))
        return terms
