"""Small builders shared by the model tests (tiny presets, CPU, deterministic)."""

from __future__ import annotations

import torch

from ssl_diffusion.models import Denoiser, ModelConfig, SelfCondConfig, build_denoiser

TINY = {"dit": "DiT-tiny", "unet": "UNet-tiny", "uvit": "UViT-tiny"}
ARCHS = tuple(TINY)


def tiny(
    arch: str,
    selfcond: SelfCondConfig | None = None,
    *,
    in_channels: int = 3,
    image_size: int = 16,
    num_classes: int = 0,
    aug_dim: int = 0,
    seed: int = 0,
) -> Denoiser:
    """A tiny denoiser in eval mode, built from a fixed seed."""
    torch.manual_seed(seed)
    model = build_denoiser(
        ModelConfig(arch=arch, preset=TINY[arch]),
        selfcond,
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        aug_dim=aug_dim,
    )
    return model.eval()


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Add Gaussian noise to every parameter, so zero-initialised paths become active."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen))


def inputs(n: int = 2, channels: int = 3, size: int = 16, seed: int = 2):
    """(x, noise_labels) with noise labels in a DiT-like [0, 1000) range."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen)
    t = 1000 * torch.rand(n, generator=gen)
    return x, t
