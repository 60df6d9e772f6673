"""Diffusion formulations (DDPM / EDM / flow), samplers and augmentation, architecture-agnostic.

The only thing this package knows about networks is the call contract in ``protocols.py``
(``models.Denoiser`` satisfies it); it never imports ``ssl_diffusion.models``. Configs live in the torch-free ``diffusion.config``.
Public names are imported lazily, so ``import ssl_diffusion.diffusion.config`` stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "augment": ("AUG_DIM", "AugmentPipe", "Augmented"),
    "config": ("AugmentConfig", "DiffusionConfig", "SamplerConfig"),
    "generate": ("check_sampler_config", "classifier_free_guidance", "sample"),
    "objectives": (
        "DDPMObjective",
        "DenoiseResult",
        "EDMObjective",
        "FlowObjective",
        "NetInput",
        "Objective",
        "build_objective",
    ),
    "rng": ("per_sample_randn", "seed_generators", "seeded_randn"),
    "samplers": (
        "ddim_sampler",
        "ddpm_ancestral_sampler",
        "ddpm_sigmas",
        "euler_sampler",
        "flow_sigmas",
        "heun_sampler",
        "karras_sigmas",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
