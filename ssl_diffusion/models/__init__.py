"""Denoisers (DiT, UNet, UViT) with DDAE++ self-conditioning, and their builder.

Example::

    cfg = ModelConfig(arch="dit", preset="DiT-S/2")
    model = build_denoiser(cfg, SelfCondConfig(enabled=True), in_channels=3, image_size=32)
    out = model(x, noise_labels, taps=["block5"])  # DenoiserOutput(pred, feats, selfcond)

The configs and presets import without torch; the torch-based names load on first access
(PEP 562), so ``from ssl_diffusion.models import ModelConfig`` stays cheap for CLIs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssl_diffusion.models.config import ModelConfig, SelfCondConfig
from ssl_diffusion.models.presets import DIT_PRESETS, PRESETS, UNET_PRESETS, UVIT_PRESETS

if TYPE_CHECKING:
    from ssl_diffusion.models.base import Denoiser, DenoiserOutput
    from ssl_diffusion.models.build import (
        DENOISERS,
        build_denoiser,
        count_params,
        selfcond_param_overhead,
    )
    from ssl_diffusion.models.dit import DiT
    from ssl_diffusion.models.selfcond import SelfConditioning, SelfCondOutput
    from ssl_diffusion.models.unet import UNet
    from ssl_diffusion.models.uvit import UViT

_LAZY = {
    "Denoiser": "base",
    "DenoiserOutput": "base",
    "DENOISERS": "build",
    "build_denoiser": "build",
    "count_params": "build",
    "selfcond_param_overhead": "build",
    "DiT": "dit",
    "SelfConditioning": "selfcond",
    "SelfCondOutput": "selfcond",
    "UNet": "unet",
    "UViT": "uvit",
}

__all__ = [
    "DENOISERS",
    "DIT_PRESETS",
    "PRESETS",
    "UNET_PRESETS",
    "UVIT_PRESETS",
    "Denoiser",
    "DenoiserOutput",
    "DiT",
    "ModelConfig",
    "SelfCondConfig",
    "SelfCondOutput",
    "SelfConditioning",
    "UNet",
    "UViT",
    "build_denoiser",
    "count_params",
    "selfcond_param_overhead",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"ssl_diffusion.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'ssl_diffusion.models' has no attribute {name!r}")
