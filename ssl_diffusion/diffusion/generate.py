"""Turning a trained denoiser into images: classifier-free guidance and the ``sample`` helper.

Samplers never see labels, EMA or guidance: those are folded into one ``denoise(x, sigma)``
closure here, built once per batch (design.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from ssl_diffusion.diffusion.config import SAMPLERS, SamplerConfig
from ssl_diffusion.diffusion.objectives.base import Objective
from ssl_diffusion.diffusion.protocols import DenoiserNet
from ssl_diffusion.diffusion.samplers import (
    Denoise,
    Progress,
    ddim_sampler,
    ddpm_ancestral_sampler,
    euler_sampler,
    heun_sampler,
)
from ssl_diffusion.errors import UserError, did_you_mean

# (x, sigma, class_labels) -> x0: a conditional denoiser before guidance is applied
LabelledDenoise = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def classifier_free_guidance(
    denoise: LabelledDenoise, class_labels: Tensor, null_labels: Tensor | int, scale: float,
    max_sigma: float | None = None,
) -> Denoise:
    """CFG (Ho & Salimans 2022) as a ``denoise(x, sigma)`` closure: uncond + s (cond - uncond).

    ``scale == 1`` returns the plain conditional denoiser (one network call per evaluation);
    otherwise both branches go through the network as one batch of 2N. Mixing x0 estimates is
    the same as mixing eps / v predictions, since x0 is affine in them at fixed (x, sigma).
    The (1 + w) cond - w uncond form used by some code bases is ``scale = 1 + w``.
    ``max_sigma`` (guidance interval): samples at sigma > max_sigma get the conditional x0
    alone; a step where all samples are above it makes one network call of N, not 2N.
    """
    if scale == 1.0:
        return lambda x, sigma: denoise(x, sigma, class_labels)
    if not isinstance(null_labels, Tensor):
        null_labels = torch.full_like(class_labels, int(null_labels))

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        off = None if max_sigma is None else (sigma > max_sigma)  # (N,) outside the interval
        if off is not None and bool(off.all()):
            return denoise(x, sigma, class_labels)
        x0 = denoise(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, null_labels])
        )
        cond, uncond = x0.chunk(2)  # (N, C, H, W) each
        out = uncond + scale * (cond - uncond)
        if off is not None:
            out = torch.where(off.view(-1, *[1] * (out.dim() - 1)), cond, out)
        return out

    return guided


def _clipped(denoise: Denoise) -> Denoise:
    def clipped(x: Tensor, sigma: Tensor) -> Tensor:
        return denoise(x, sigma).clamp(-1.0, 1.0)  # pixel-range x0 (DDAE / EDM sampling)

    return clipped


def check_sampler_config(cfg: SamplerConfig) -> None:
    """Raise a one-line UserError for an invalid ``SamplerConfig``."""
    if cfg.sampler not in SAMPLERS:
        raise UserError(
            f"unknown sampler.sampler `{cfg.sampler}`; choose one of {', '.join(SAMPLERS)}"
            f"{did_you_mean(cfg.sampler, SAMPLERS)}"
        )
    if cfg.steps < 1:
        raise UserError(f"sampler.steps={cfg.steps} is invalid; it must be >= 1")
    if cfg.eta < 0:
        raise UserError(
            f"sampler.eta={cfg.eta} is invalid; it must be >= 0 (0 = deterministic DDIM)"
        )
    if cfg.cfg < 0:
        raise UserError(f"sampler.cfg={cfg.cfg} is invalid; it must be >= 0 (1 = no guidance)")
    if cfg.shift <= 0:
        raise UserError(f"sampler.shift={cfg.shift} is invalid; it must be > 0 (1 = no shift)")
    if cfg.cfg_max_sigma is not None and cfg.cfg_max_sigma <= 0:
        raise UserError(f"sampler.cfg_max_sigma={cfg.cfg_max_sigma} is invalid; it must be > 0 "
                        f"(or null: guidance at every step)")


def sample(
    objective: Objective,
    net: DenoiserNet,
    noise: Tensor,
    sampler_cfg: SamplerConfig,
    class_labels: Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
    null_label: int | None = None,
    sigmas: Tensor | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """Generate images (N, C, H, W) from unit-variance ``noise`` (N, C, H, W) without gradients.

    Pass float64 ``noise`` to integrate in float64 (EDM / DDAE do); images come back in its dtype.
    ``generators`` (one per sample, ``rng.seed_generators``) feed the stochastic samplers so the
    result for a seed does not depend on the batch. ``sigmas`` overrides the objective's grid
    (``objective.sampling_sigmas(steps) * shift``). ``null_label`` is the unconditional class
    for CFG; by default ``net.num_classes`` (the Denoiser convention). The caller puts ``net``
    in eval mode (and swaps in EMA weights).
    """
    check_sampler_config(sampler_cfg)
    if sigmas is None:
        sigmas = objective.sampling_sigmas(sampler_cfg.steps) * sampler_cfg.shift

    def labelled(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        # the sampler state may be float64 (as in EDM); the network always sees float32
        return objective.denoise(net, x.float(), sigma, class_labels=labels).x0.to(x.dtype)

    if sampler_cfg.cfg != 1.0:
        if class_labels is None:
            raise UserError(
                f"sampler.cfg={sampler_cfg.cfg} needs class labels (a class-conditional model); "
                "pass class labels or set sampler.cfg=1"
            )
        if null_label is None:
            null_label = getattr(net, "num_classes", None)
        if null_label is None:
            raise UserError(
                "classifier-free guidance needs the null class: pass null_label or give the net `num_classes`"
            )
    if class_labels is None:
        denoise: Denoise = partial(labelled, labels=None)
    else:
        null = 0 if null_label is None else null_label  # unused when cfg == 1
        denoise = classifier_free_guidance(labelled, class_labels, null, sampler_cfg.cfg,
                                           sampler_cfg.cfg_max_sigma)
    if sampler_cfg.clip_x0:
        denoise = _clipped(denoise)

    with torch.no_grad():
        if sampler_cfg.sampler == "heun":
            churn = (math.sqrt(2.0) - 1.0) * sampler_cfg.eta  # DDAE's mapping of eta to EDM gamma
            return heun_sampler(
                denoise, noise, sigmas, churn=churn, generators=generators, progress=progress
            )
        if sampler_cfg.sampler == "euler":
            return euler_sampler(denoise, noise, sigmas, progress=progress)
        if sampler_cfg.sampler == "ddim":
            return ddim_sampler(
                denoise,
                noise,
                sigmas,
                eta=sampler_cfg.eta,
                generators=generators,
                progress=progress,
            )
        return ddpm_ancestral_sampler(
            denoise, noise, sigmas, generators=generators, progress=progress
        )
