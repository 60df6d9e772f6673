"""Size presets of the three denoiser families (torch-free, so configs can validate names).

Each preset is a plain dict of constructor sizes. ``ModelConfig`` overrides replace single keys.
Sources: DiT sizes from Peebles & Xie 2023 (Table 1); UNet sizes from the DDAE configs
(FutureXiang/ddae ``config/*.yaml``, 35.746M / 56.524M parameters at 32 px); UViT sizes from
Bao et al. 2023 (U-ViT-S/M/L), whose S/2 is the DDAE++ author's CIFAR UViT (44.26M at 32 px).
"""

from __future__ import annotations

from typing import Any


def _dit(depth: int, width: int, heads: int, patch_size: int) -> dict[str, Any]:
    # DiT and UViT use no dropout.
    return {
        "depth": depth,
        "width": width,
        "heads": heads,
        "patch_size": patch_size,
        "dropout": 0.0,
    }


# depth = transformer blocks, width = hidden size D, heads = attention heads, patch_size = p.
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "DiT-tiny": _dit(4, 64, 2, 2),  # tests / CPU smoke runs
    "DiT-cpu": _dit(8, 192, 3, 2),  # CPU-trainable quickstart size
    "DiT-S/2": _dit(12, 384, 6, 2),
    "DiT-S/4": _dit(12, 384, 6, 4),
    "DiT-B/2": _dit(12, 768, 12, 2),
    "DiT-B/4": _dit(12, 768, 12, 4),
    "DiT-L/2": _dit(24, 1024, 16, 2),
    "DiT-L/4": _dit(24, 1024, 16, 4),
    "DiT-XL/2": _dit(28, 1152, 16, 2),
    "DiT-XL/4": _dit(28, 1152, 16, 4),
}


def _ldit(depth: int, width: int, heads: int, patch_size: int) -> dict[str, Any]:
    # LightningDiT block options (lightning_blocks.py); qk-norm off as in its default config.
    return {**_dit(depth, width, heads, patch_size), "norm": "rmsnorm", "ffn": "swiglu",
            "rope": True, "qk_norm": False}


# LightningDiT-style presets for latent inputs (DDAE++ spec §7.2): B/L, patch 1 (VA-VAE f16d32:
# 16x16x32 latents at 256 px) or patch 2 (SD-VAE f8: 32x32x4 latents at 256 px -> 256 tokens).
DIT_PRESETS.update({
    "LightningDiT-tiny": _ldit(4, 64, 2, 2),  # tests / CPU smoke runs (head dim 32)
    "LightningDiT-B/1": _ldit(12, 768, 12, 1),
    "LightningDiT-B/2": _ldit(12, 768, 12, 2),
    "LightningDiT-L/1": _ldit(24, 1024, 16, 1),
    "LightningDiT-L/2": _ldit(24, 1024, 16, 2),
})


def _unet(width: int, mult: list[int], depth: int, attn: list[int], dropout: float, resample: str):
    return {
        "width": width,  # base channels
        "channel_mult": mult,  # channels per level = width * mult
        "depth": depth,  # residual blocks per level (the decoder has depth + 1)
        "attn_resolutions": attn,  # feature-map sizes (px) with self-attention
        "heads": 1,  # DDAE: single-head attention
        "dropout": dropout,
        "resample": resample,  # "conv" (DDPM) or "res" (BigGAN ResBlock, DDPM++)
    }


UNET_PRESETS: dict[str, dict[str, Any]] = {
    "UNet-tiny": _unet(32, [1, 2], 1, [8], 0.0, "conv"),  # tests / CPU smoke runs
    "DDPM-35.7M": _unet(128, [1, 2, 2, 2], 2, [16], 0.1, "conv"),  # DDAE DDPM_ddpm.yaml
    "DDPM++-56.5M": _unet(128, [2, 2, 2], 4, [16], 0.1, "res"),  # DDAE DDPM_ddpmpp.yaml
}

# depth = total blocks (odd: depth//2 in-blocks, 1 mid-block, depth//2 out-blocks).
UVIT_PRESETS: dict[str, dict[str, Any]] = {
    "UViT-tiny": _dit(5, 64, 2, 2),  # tests / CPU smoke runs
    "UViT-S/2": _dit(13, 512, 8, 2),  # the DDAE++ author's CIFAR UViT (FutureXiang/Diffusion)
    "UViT-M/2": _dit(17, 768, 12, 2),
    "UViT-L/2": _dit(21, 1024, 16, 2),
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dit": DIT_PRESETS,
    "unet": UNET_PRESETS,
    "uvit": UVIT_PRESETS,
}

# Which ModelConfig override fields each architecture understands.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "dit": ("depth", "width", "heads", "patch_size", "dropout", "mlp_ratio", "norm", "ffn", "rope",
            "qk_norm"),
    "unet": ("depth", "width", "heads", "dropout", "channel_mult", "attn_resolutions", "resample"),
    "uvit": ("depth", "width", "heads", "patch_size", "dropout", "mlp_ratio"),
}
