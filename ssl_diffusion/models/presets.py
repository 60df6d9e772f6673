"""Size presets of the three denoiser families (torch-free, so configs can validate names).

Each preset is a plain dict of constructor sizes. ``ModelConfig`` overrides replace single keys.
Sources: DiT sizes from Peebles & Xie 2023 (Table 1); UNet sizes from the DDAE configs
(FutureXiang/ddae ``config/*.yaml``, 35.746M / 56.524M parameters at 32 px); UViT sizes from
Bao et al. 2023 (U-ViT-S/M/L), whose S/2 is the DDAE++ author's CIFAR UViT (44.26M at 32 px).
"""

from __future__ import annotations

from typing import Any

# depth = transformer blocks, width = hidden size D, heads = attention heads, patch_size = p.
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "DiT-tiny": dict(depth=4, width=64, heads=2, patch_size=2),  # tests / CPU smoke runs
    "DiT-cpu": dict(depth=8, width=192, heads=3, patch_size=2),  # CPU-trainable quickstart size
    "DiT-S/2": dict(depth=12, width=384, heads=6, patch_size=2),
    "DiT-S/4": dict(depth=12, width=384, heads=6, patch_size=4),
    "DiT-B/2": dict(depth=12, width=768, heads=12, patch_size=2),
    "DiT-B/4": dict(depth=12, width=768, heads=12, patch_size=4),
    "DiT-L/2": dict(depth=24, width=1024, heads=16, patch_size=2),
    "DiT-L/4": dict(depth=24, width=1024, heads=16, patch_size=4),
    "DiT-XL/2": dict(depth=28, width=1152, heads=16, patch_size=2),
    "DiT-XL/4": dict(depth=28, width=1152, heads=16, patch_size=4),
}
for _p in DIT_PRESETS.values():
    _p.setdefault("dropout", 0.0)  # DiT uses no dropout

# width = base channels, depth = residual blocks per resolution, channel_mult = per-level
# channel multipliers, attn_resolutions = feature-map sizes (px) that get self-attention,
# heads = attention heads (DDAE: one head), resample = "conv" (DDPM) or "res" (BigGAN ResBlock).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "UNet-tiny": dict(
        width=32, channel_mult=[1, 2], depth=1, attn_resolutions=[8], heads=1,
        dropout=0.0, resample="conv",
    ),
    "DDPM-35.7M": dict(  # DDAE DDPM_ddpm.yaml (Ho et al. 2020 CIFAR-10 UNet)
        width=128, channel_mult=[1, 2, 2, 2], depth=2, attn_resolutions=[16], heads=1,
        dropout=0.1, resample="conv",
    ),
    "DDPM++-56.5M": dict(  # DDAE DDPM_ddpmpp.yaml (Song et al. 2021 style, BigGAN resampling)
        width=128, channel_mult=[2, 2, 2], depth=4, attn_resolutions=[16], heads=1,
        dropout=0.1, resample="res",
    ),
}

# depth = total blocks (odd: depth//2 in-blocks, 1 mid-block, depth//2 out-blocks).
UVIT_PRESETS: dict[str, dict[str, Any]] = {
    "UViT-tiny": dict(depth=5, width=64, heads=2, patch_size=2),
    "UViT-S/2": dict(depth=13, width=512, heads=8, patch_size=2),  # author's CIFAR UViT
    "UViT-M/2": dict(depth=17, width=768, heads=12, patch_size=2),
    "UViT-L/2": dict(depth=21, width=1024, heads=16, patch_size=2),
}
for _p in UVIT_PRESETS.values():
    _p.setdefault("dropout", 0.0)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dit": DIT_PRESETS,
    "unet": UNET_PRESETS,
    "uvit": UVIT_PRESETS,
}

# Which ModelConfig override fields each architecture understands.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "dit": ("depth", "width", "heads", "patch_size", "dropout", "mlp_ratio"),
    "unet": (
        "depth", "width", "heads", "dropout", "channel_mult", "attn_resolutions", "resample",
    ),
    "uvit": ("depth", "width", "heads", "patch_size", "dropout", "mlp_ratio"),
}
