"""EDM objective (Karras et al. 2022, Table 1): preconditioned denoiser in VE space.

``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 +
sd^2)``, ``c_noise = ln(s) / 4``; training draws ``ln s ~ N(P_mean, P_std^2)`` and weights the
x0 error by ``lambda = (s^2 + sd^2) / (s sd)^2`` (= 1 / c_out^2, so F's error has unit weight).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ssl_diffusion.diffusion.config import DiffusionConfig
from ssl_diffusion.diffusion.objectives.base import NetInput, Objective, bcast, mean_flat
from ssl_diffusion.diffusion.samplers import karras_sigmas


class EDMPrecond(NamedTuple):
    c_skip: Tensor  # (N,)
    c_out: Tensor  # (N,)
    c_in: Tensor  # (N,)
    c_noise: Tensor  # (N,)


class EDMObjective(Objective):
    name = "edm"

    def __init__(self, cfg: DiffusionConfig):
        super().__init__(cfg)
        self.sigma_data = cfg.sigma_data
        self.sigma_min = 0.002 if cfg.sigma_min is None else cfg.sigma_min  # EDM paper
        self.sigma_max = 80.0 if cfg.sigma_max is None else cfg.sigma_max  # EDM paper

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(t)  # EDM's time is sigma

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        return torch.as_tensor(sigma)

    def preconditioning(self, sigma: Tensor) -> EDMPrecond:
        sd2, s2 = self.sigma_data**2, sigma**2
        return EDMPrecond(
            c_skip=sd2 / (s2 + sd2),
            c_out=sigma * self.sigma_data * torch.rsqrt(s2 + sd2),
            c_in=torch.rsqrt(s2 + sd2),
            c_noise=sigma.log() / 4,
        )

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # lambda(sigma)

    def _default_train_sigma(self, n: int, generator: torch.Generator | None) -> Tensor:
        gdev = generator.device if generator is not None else None
        z = torch.randn(n, generator=generator, device=gdev)
        return (self.cfg.p_mean + self.cfg.p_std * z).exp()

    def sampling_sigmas(self, steps: int) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.cfg.rho)

    def net_inputs(self, x_ve: Tensor, sigma: Tensor) -> NetInput:
        p = self.preconditioning(sigma)
        return NetInput(x=x_ve * bcast(p.c_in, x_ve), c_noise=p.c_noise)

    def pred_to_x0(self, x_ve: Tensor, sigma: Tensor, pred: Tensor) -> Tensor:
        p = self.preconditioning(sigma)
        return bcast(p.c_skip, x_ve) * x_ve + bcast(p.c_out, x_ve) * pred

    def train_target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        p = self.preconditioning(sigma)
        x_ve = x0 + bcast(sigma, x0) * noise
        return (x0 - bcast(p.c_skip, x0) * x_ve) / bcast(p.c_out, x0)  # EDM eq. 8 effective target

    def diffusion_loss(
        self, pred: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor
    ) -> dict[str, Tensor]:
        x0_hat = self.pred_to_x0(x0 + bcast(sigma, x0) * noise, sigma, pred)
        return {"loss_diffusion": self.loss_weight(sigma) * mean_flat((x0_hat - x0) ** 2)}
