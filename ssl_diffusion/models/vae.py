"""The latent autoencoder of the latent path: diffusers' ``AutoencoderKL`` behind one small class.

DiT / LightningDiT (DDAE++ spec §4, §7.2) train on VAE latents of 256 px ImageNet: the SD VAE
(f8, 4 channels, the default ``model.vae.path``) or VA-VAE f16d32. Images are encoded once, by
``main_extract_latents.py`` (posterior *mean*, no sampling, so the latents are deterministic),
and generated latents are decoded back to pixels for FID/IS. Config keys: ``model.vae.path``
(hub id or local folder), ``model.vae.subfolder``, ``model.vae.dtype``,
``model.vae.local_files_only`` (default true: no download at run time).

diffusers is the optional extra ``[latent]``; it is imported only here, when a VAE is loaded.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.models.config import VAEConfig

INSTALL_HINT = 'install the latent extra: pip install -e ".[latent]"'
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _import_autoencoder() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError(f"the latent path needs diffusers, which is not installed; {INSTALL_HINT}") from None
    return AutoencoderKL


def _looks_local(path: str) -> bool:
    """A hub id is exactly ``org/name``; anything else (or an existing path) is a folder."""
    return (path.startswith((".", "/", "~")) or path.count("/") != 1
            or os.path.exists(os.path.expanduser(path)))


class LatentVAE(nn.Module):
    """Encode [-1, 1] images to posterior-mean latents and decode latents back to [-1, 1]."""

    def __init__(self, autoencoder: nn.Module, source: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.vae = autoencoder.eval().requires_grad_(False)
        self.source = source  # path or hub id, recorded in the latent manifest
        self.compute_dtype = dtype
        cfg = autoencoder.config
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)  # f8 for the SD VAE

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise UserError(f"image size {image_size} is not divisible by the VAE's downsampling "
                            f"factor {self.downsample}")
        side = image_size // self.downsample
        return (self.latent_channels, side, side)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> posterior mean (N, C, H/f, W/f) float32."""
        x = images.to(self.device, self.compute_dtype)
        return self.vae.encode(x).latent_dist.mean.float()  # (N, C, h, w)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Raw (un-normalised) latents (N, C, h, w) -> images (N, 3, H, W) float32 in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise UserError(f"latents of shape {tuple(latents.shape)} do not fit this VAE "
                            f"({self.latent_channels} latent channels, from {self.source}); "
                            f"use the VAE the latents were extracted with (model.vae.path)")
        z = latents.to(self.device, self.compute_dtype)
        return self.vae.decode(z).sample.float().clamp(-1, 1)  # (N, 3, H, W)


def load_vae(cfg: VAEConfig, device: str | torch.device = "cpu") -> LatentVAE:
    """``AutoencoderKL.from_pretrained(cfg.path)`` as a ``LatentVAE``; one-line errors."""
    autoencoder_cls = _import_autoencoder()
    path = os.path.expanduser(cfg.path)
    if _looks_local(cfg.path) and not os.path.isdir(path):
        raise UserError(f"model.vae.path={cfg.path} is not a folder; point it at a diffusers "
                        f"AutoencoderKL folder (config.json + weights) or a hub id such as "
                        f"stabilityai/sd-vae-ft-ema")
    kwargs: dict[str, Any] = {"local_files_only": cfg.local_files_only}
    if cfg.subfolder:
        kwargs["subfolder"] = cfg.subfolder
    try:
        ae = autoencoder_cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        hint = (" (not in the local cache: fetch it once with model.vae.local_files_only=false, "
                "or download the folder and pass its path)" if not os.path.isdir(path) else "")
        raise UserError(f"cannot load the VAE model.vae.path={cfg.path}{hint}: {first}") from None
    dtype = _DTYPES[cfg.dtype]
    return LatentVAE(ae.to(device=device, dtype=dtype), cfg.path, dtype)


def tiny_autoencoder(latent_channels: int = 4, seed: int = 0) -> nn.Module:
    """A random 2-level AutoencoderKL (f2, a few thousand parameters) for tests and CPU demos."""
    autoencoder_cls = _import_autoencoder()
    torch.manual_seed(seed)
    return autoencoder_cls(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
    )


__all__ = ["INSTALL_HINT", "LatentVAE", "load_vae", "tiny_autoencoder"]
