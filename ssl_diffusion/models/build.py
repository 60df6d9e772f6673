"""``build_denoiser``: ModelConfig + SelfCondConfig + data shape -> a DiT, UNet or UViT."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ssl_diffusion.errors import UserError
from ssl_diffusion.models.base import Denoiser
from ssl_diffusion.models.config import ModelConfig, SelfCondConfig
from ssl_diffusion.models.dit import DiT
from ssl_diffusion.models.unet import UNet
from ssl_diffusion.models.uvit import UViT

DENOISERS: dict[str, type[Denoiser]] = {"dit": DiT, "unet": UNet, "uvit": UViT}

__all__ = ["DENOISERS", "build_denoiser", "count_params", "selfcond_param_overhead"]


def build_denoiser(
    model_cfg: ModelConfig,
    selfcond_cfg: SelfCondConfig | None = None,
    *,
    in_channels: int,
    image_size: int,
    num_classes: int = 0,
    aug_dim: int = 0,
) -> Denoiser:
    """Build the configured denoiser.

    Args:
        model_cfg: architecture + preset + overrides.
        selfcond_cfg: self-conditioning knobs (None or ``enabled=False`` = baseline).
        in_channels: image (or latent) channels; the output has the same count.
        image_size: square input resolution; must suit the patch size / downsampling factor.
        num_classes: 0 = unconditional; else labels in [0, num_classes], num_classes = null (CFG).
        aug_dim: width of the augmentation-label vector (EDM: 9), 0 = none.
    """
    if in_channels < 1 or image_size < 1 or num_classes < 0 or aug_dim < 0:
        raise UserError(
            f"invalid data shape for the denoiser: in_channels={in_channels}, "
            f"image_size={image_size}, num_classes={num_classes}, aug_dim={aug_dim}"
        )
    sizes = model_cfg.resolved()
    if selfcond_cfg is not None:
        selfcond_cfg.validate()
    return DENOISERS[model_cfg.arch](
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        aug_dim=aug_dim,
        selfcond=selfcond_cfg,
        **sizes,
    )


def count_params(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def selfcond_param_overhead(
    model_cfg: ModelConfig,
    selfcond_cfg: SelfCondConfig,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 0,
    aug_dim: int = 0,
) -> dict[str, Any]:
    """Parameters with and without self-conditioning (built on the meta device: no memory).

    Returns ``{"params_base", "params_selfcond", "overhead", "ratio"}`` where overhead is the
    extra parameter count and ratio = overhead / params_base (the paper's "~1%").
    """
    kwargs = {
        "in_channels": in_channels,
        "image_size": image_size,
        "num_classes": num_classes,
        "aug_dim": aug_dim,
    }
    enabled = replace(selfcond_cfg, enabled=True)
    with torch.device("meta"):
        base = count_params(build_denoiser(model_cfg, None, **kwargs))
        with_sc = count_params(build_denoiser(model_cfg, enabled, **kwargs))
    return {
        "params_base": base,
        "params_selfcond": with_sc,
        "overhead": with_sc - base,
        "ratio": (with_sc - base) / base,
    }
