"""Backbones of the classic SSL methods: torchvision ResNets (CIFAR stem for small images) and a
small ViT whose position embedding is interpolated, so DINO's local crops of any size work.

Every backbone maps (N, C, H, W) -> (N, feature_dim) and adapts its stem to C (grey data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.config.sections import BackboneConfig
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import BACKBONES

VIT_PRESETS = {
    "vit_tiny": {"width": 192, "depth": 12, "heads": 3},  # DeiT-Ti (Touvron et al. 2021)
    "vit_small": {"width": 384, "depth": 12, "heads": 6},  # DeiT-S
    "vit_micro": {"width": 64, "depth": 2, "heads": 2},  # tests / CPU smoke runs
}


def _resnet(arch: str, cfg: BackboneConfig, info: DataInfo) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else info.image_size <= 64
    if cifar_stem:  # 3x3 stride-1 stem, no max-pool (standard for 32 px data, e.g. solo-learn)
        net.conv1 = nn.Conv2d(info.channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif info.channels != 3:
        net.conv1 = nn.Conv2d(info.channels, 64, 7, 2, 3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


@BACKBONES.register("resnet18")
def resnet18(cfg: BackboneConfig, info: DataInfo) -> nn.Module:
    return _resnet("resnet18", cfg, info)


@BACKBONES.register("resnet50")
def resnet50(cfg: BackboneConfig, info: DataInfo) -> nn.Module:
    return _resnet("resnet50", cfg, info)


class ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, drop_path: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop_path = drop_path

    def _drop(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_path == 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
        return x * keep / (1 - self.drop_path)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, T, d_head)
        attn = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d_head)
        x = x + self._drop(self.proj(attn.transpose(1, 2).reshape(n, t, d)))
        return x + self._drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Pre-LN ViT with a CLS token; features = final-norm CLS token."""

    def __init__(self, channels: int, image_size: int, patch: int, width: int, depth: int,
                 heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.patch, self.grid = patch, image_size // patch
        self.feature_dim = width
        self.patch_embed = nn.Conv2d(channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 1 + self.grid**2, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            ViTBlock(width, heads, drop_path * i / max(depth - 1, 1)) for i in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def _pos(self, grid: int) -> Tensor:
        if grid == self.grid:
            return self.pos
        cls_pos, patch_pos = self.pos[:, :1], self.pos[:, 1:]
        d = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch_embed(x)  # (N, D, H/p, W/p)
        grid = h.shape[-1]
        h = h.flatten(2).transpose(1, 2)  # (N, T, D)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self._pos(grid)  # (N, 1+T, D)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)[:, 0]  # (N, D)


def _vit(name: str, cfg: BackboneConfig, info: DataInfo) -> ViT:
    patch = cfg.patch_size or max(info.image_size // 8, 1)
    if info.image_size % patch:
        raise UserError(f"backbone.patch_size={patch} does not divide data.image_size={info.image_size}")
    sizes = dict(VIT_PRESETS[name])
    for key in ("width", "depth", "heads"):
        if getattr(cfg, key, None) is not None:
            sizes[key] = getattr(cfg, key)
    if sizes["width"] % sizes["heads"]:
        raise UserError(f"backbone.width={sizes['width']} is not divisible by backbone.heads={sizes['heads']}")
    return ViT(info.channels, info.image_size, patch, drop_path=cfg.drop_path, **sizes)


for _name in VIT_PRESETS:
    BACKBONES.register(_name)(lambda cfg, info, _n=_name: _vit(_n, cfg, info))


def build_backbone(cfg: BackboneConfig, info: DataInfo) -> nn.Module:
    """Backbone from ``cfg.backbone`` for a dataset; exposes ``.feature_dim``."""
    net = BACKBONES.get(cfg.name)(cfg, info)
    assert hasattr(net, "feature_dim"), f"backbone {cfg.name} must set feature_dim"
    return net


__all__ = ["VIT_PRESETS", "ViT", "build_backbone"]
