"""DDPM objective (Ho et al. 2020): linear beta schedule, eps-prediction, as in DDAE's DDPM configs.

Network input is the VP sample ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps = x_ve / sqrt(1 +
sigma^2)`` and the noise label is ``c_noise = t / T`` in (0, 1] (DDAE feeds ``t / n_T``); for
a sigma between two steps t is fractional (``DDPMSchedule``), so continuous samplers also work.
Training draws an integer t uniformly from {1, ..., T}.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_diffusion.diffusion.config import DiffusionConfig
from ssl_diffusion.diffusion.noise import DDPMSchedule, vp_scale
from ssl_diffusion.diffusion.objectives.base import NetInput, Objective, bcast, mean_flat
from ssl_diffusion.diffusion.samplers import ddpm_sigmas
from ssl_diffusion.errors import UserError


class DDPMObjective(Objective):
    name = "ddpm"
    range_hint = " (the ddpm range is set by beta_start, beta_end and num_timesteps)"

    def __init__(self, cfg: DiffusionConfig):
        super().__init__(cfg)
        if cfg.sigma_min is not None or cfg.sigma_max is not None:
            raise UserError(
                "diffusion.sigma_min/sigma_max do not apply to objective ddpm (its range is fixed by "
                "beta_start, beta_end and num_timesteps); remove them or use objective edm/flow"
            )
        self.schedule = DDPMSchedule(cfg.beta_start, cfg.beta_end, cfg.num_timesteps)
        self.sigma_min = self.schedule.sigma_min  # sigma(t=1) ~ 0.01 for the default schedule
        self.sigma_max = self.schedule.sigma_max  # sigma(t=T) ~ 157 for the default schedule

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        return self.schedule.t_to_sigma(t)

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        return self.schedule.sigma_to_t(sigma)

    def _default_train_sigma(self, n: int, generator: torch.Generator | None) -> Tensor:
        gdev = generator.device if generator is not None else None
        t = torch.randint(1, self.cfg.num_timesteps + 1, (n,), generator=generator, device=gdev)
        return self.schedule.sigmas.to(t.device)[t].float()  # (n,)

    def sampling_sigmas(self, steps: int) -> Tensor:
        return ddpm_sigmas(self.schedule, steps)

    def net_inputs(self, x_ve: Tensor, sigma: Tensor) -> NetInput:
        t = self.schedule.sigma_to_t(sigma)  # (N,) continuous, integer for table sigmas
        return NetInput(x=x_ve * bcast(vp_scale(sigma), x_ve), c_noise=t / self.cfg.num_timesteps)

    def pred_to_x0(self, x_ve: Tensor, sigma: Tensor, pred: Tensor) -> Tensor:
        # x_t / sqrt(abar) = x0 + sigma eps  =>  x0 = x_ve - sigma * eps_hat
        return x_ve - bcast(sigma, x_ve) * pred

    def train_target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise

    def diffusion_loss(
        self, pred: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor
    ) -> dict[str, Tensor]:
        return {"loss_diffusion": mean_flat((pred - noise) ** 2)}  # DDPM L_simple
