"""Typed, torch-free configs of the diffusion area: objective, sampler and augmentation.

Noise levels are always given as the variance-exploding (VE) equivalent ``sigma`` (see
``noise.py``), whatever the objective, so one number means the same corruption for DDPM, EDM
and flow models. The lead composes these dataclasses into the root config; YAML recipes
override them with ``diffusion.<field>``, ``sampler.<field>`` and ``augment.<field>`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OBJECTIVES = ("ddpm", "edm", "flow")
TRAIN_NOISE = ("default", "lognormal", "uniform_logsnr")
SAMPLERS = ("ddpm", "ddim", "euler", "heun")


@dataclass
class DiffusionConfig:
    """Training objective (noise schedule, preconditioning, loss) of a diffusion model."""

    # formulation: edm for pixel UNets (DDAE), flow for latent DiT (LightningDiT) [spec §4]
    objective: Literal["ddpm", "edm", "flow"] = "edm"  # ddpm | edm | flow
    # DDPM (Ho et al. 2020; DDAE DDPM configs): linear beta, eps-prediction, c_noise = t / T
    beta_start: float = 1e-4  # beta_1 of the linear schedule [DDPM paper]
    beta_end: float = 0.02  # beta_T of the linear schedule [DDPM paper]
    num_timesteps: int = 1000  # T, number of discrete steps [DDPM paper]
    # EDM (Karras et al. 2022): preconditioned x0-prediction, log-normal training sigma
    sigma_data: float = 0.5  # std of the data; 0.5 for images in [-1, 1] [EDM paper]
    p_mean: float = -1.2  # mean of ln(sigma) at training [EDM paper, Table 1]
    p_std: float = 1.2  # std of ln(sigma) at training [EDM paper, Table 1]
    # Noise range (VE sigma) used for sampling and accepted by check_sigma; None = the objective's
    # default: edm [0.002, 80] (EDM paper), flow [0.002, 999] (t in [0.002, 0.999]; t=1 is pure
    # noise at infinite sigma), ddpm the schedule's own [sigma(t=1), sigma(t=T)] (no override).
    sigma_min: float | None = None  # smallest noise level, VE sigma
    sigma_max: float | None = None  # largest noise level (sampling starts here), VE sigma
    rho: float = 7.0  # Karras sampling-grid exponent [EDM paper eq. 5]
    # Flow (rectified flow / linear path, velocity prediction; LightningDiT defaults [EXT-CODE])
    t_mean: float = 0.0  # mean of logit(t) = ln(sigma) (logit-normal t) [SD3 / LightningDiT]
    t_std: float = 1.0  # std of logit(t) [SD3 / LightningDiT]
    cosine_loss_weight: float = 0.0  # weight of 1 - cos(v_hat, v); LightningDiT: 1.0 [EXT-CODE]
    # Ablation knob for the training noise-level distribution (applies to every objective):
    #   default        = ddpm: uniform integer t; edm: ln(sigma) ~ N(p_mean, p_std^2);
    #                    flow: logit-normal t
    #   lognormal      = ln(sigma) ~ N(p_mean, p_std^2), clipped to [sigma_min, sigma_max]
    #   uniform_logsnr = logSNR uniform over [logSNR(sigma_max), logSNR(sigma_min)]
    train_noise: Literal["default", "lognormal", "uniform_logsnr"] = "default"  # [inferred knob]


@dataclass
class SamplerConfig:
    """How images are generated from a trained denoiser (see ``samplers.py``)."""

    sampler: Literal["ddpm", "ddim", "euler", "heun"] = "heun"  # solver; EDM/DDAE: Heun
    steps: int = 18  # number of steps (Heun NFE = 2*steps-1); EDM: 18, DDAE DDIM: 100
    # stochasticity, 0 = deterministic: DDIM eta (1 = DDPM posterior noise) [DDIM paper];
    # for heun EDM churn gamma = (sqrt(2) - 1) * eta [DDAE-CODE]
    eta: float = 0.0  # sampler stochasticity in [0, 1]
    cfg: float = 1.0  # classifier-free guidance scale s: x0 = uncond + s*(cond - uncond); 1 = off
    clip_x0: bool = True  # clip each x0 estimate to [-1, 1]; pixel models only [DDAE]
    # shift multiplies every sampling sigma; for flow it is the SD3 timestep shift
    # t' = s t / (1 + (s - 1) t) [inferred]
    shift: float = 1.0  # sampling-grid shift s; 1 = none
    # LightningDiT's timestep_shift s_L (data-time convention) is shift = 1 / s_L here: its 0.3
    # is shift=3.333 (more steps at high noise) [EXT-CODE, hustvl/LightningDiT]
    # Guidance interval (Kynkaanniemi et al. 2024): guidance only where sigma <= cfg_max_sigma,
    # the conditional prediction alone above it; null = guidance at every step. LightningDiT's
    # cfg_interval_start=0.11 (data time) = flow t 0.89 = sigma 0.89/0.11 = 8.09 [EXT-CODE]
    cfg_max_sigma: float | None = None  # VE sigma above which guidance is off


@dataclass
class AugmentConfig:
    """EDM-style non-leaking geometric augmentation (Karras et al. 2022, App. B.4).

    A transform with multiplier m is applied to a sample with probability min(p * m, 1); its
    parameters are returned as a 9-d label so the network is conditioned on them and can be
    asked for un-augmented images (label 0) at sampling time. Flips are *randomised* when
    applied (50% flipped), as in EDM: ``xflip=1e8`` gives a plain random horizontal flip.
    """

    p: float = 0.12  # base probability of each transform; DDAE EDM_ddpmpp_aug uses 0.12 [DDAE-CODE]
    xflip: float = 1e8  # multiplier of p for the random x-flip; 1e8 = always randomised [DDAE-CODE]
    yflip: float = 1.0  # multiplier of p for the random y-flip [EDM]
    scale: float = 1.0  # multiplier of p for isotropic scaling [EDM]
    rotate: float = 1.0  # multiplier of p for arbitrary rotation [EDM]
    aniso: float = 1.0  # multiplier of p for anisotropic scaling [EDM]
    translate: float = 1.0  # multiplier of p for fractional translation [EDM]
    scale_std: float = 0.2  # std of log2(scale) [EDM]
    rotate_max: float = 1.0  # max |angle| as a fraction of pi (1 = any angle) [EDM]
    aniso_std: float = 0.2  # std of log2(anisotropic scale) [EDM]
    translate_std: float = 0.125  # std of the shift, as a fraction of image size [EDM]
