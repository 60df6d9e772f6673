"""Building blocks shared by the DiT, UNet and UViT denoisers.

Sinusoidal embeddings (Vaswani et al. 2017, as used by DDPM/DiT), fixed 2-D sin-cos position
embeddings (MAE), multi-head self-attention on ``F.scaled_dot_product_attention`` (fused
kernels on GPU, one code path everywhere), the transformer MLP, patchify/unpatchify and the
class-label table with a null row for classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Objectives give O(1) noise labels (DDPM t/T, EDM ln(sigma)/4, flow t). The sinusoid's
# fastest frequency is 1 rad per unit, so an O(1) label would barely move most channels; scaling
# by 1000 puts it in the [0, 1000] range the DiT/DDPM embeddings were designed for.
NOISE_LABEL_SCALE = 1000.0


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0,
                       scale: float = NOISE_LABEL_SCALE) -> Tensor:
    """Sinusoidal embedding (N,) -> (N, dim) of a float noise label; always float32.

    Frequencies ``max_period ** (-i / half)`` for i < half, [cos | sin] order (GLIDE/DiT),
    applied to ``scale * t``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = (t.float() * scale)[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (grid*grid, dim), row-major like the patch order.

    Half of the channels encode the row index, half the column index (MAE / DiT convention:
    first half from the w coordinate, second half from the h coordinate).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # (D/4,)
    coords = torch.arange(grid, dtype=torch.float64)
    hh, ww = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each

    def encode(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]  # (G*G, D/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (G*G, D/2)

    return torch.cat([encode(ww), encode(hh)], dim=1).float()  # (G*G, D)


class Attention(nn.Module):
    """Multi-head self-attention over tokens (N, T, D) via ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)  # (N, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, d)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    """Transformer feed-forward block: Linear -> GELU -> (dropout) -> Linear."""

    def __init__(self, dim: int, hidden: int, approx_gelu: bool = False, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if approx_gelu else "none")
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))  # (N, T, D)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (N, T, D), T = (H/p)*(W/p), row-major."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


def unpatchify(x: Tensor, channels: int, patch_size: int, grid: int) -> Tensor:
    """Tokens (N, T, p*p*C) -> image (N, C, grid*p, grid*p); inverse of the patch order above."""
    n, p = x.shape[0], patch_size
    x = x.reshape(n, grid, grid, p, p, channels)  # (N, h, w, p, q, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, q)
    return x.reshape(n, channels, grid * p, grid * p)


class LabelEmbedding(nn.Module):
    """Class-label table with ``num_classes + 1`` rows; row ``num_classes`` is the null (CFG) class.

    Label dropout for classifier-free guidance is the method's job: it passes the null index.
    ``None`` labels mean all-null (unconditional forward).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, n: int, device: torch.device) -> Tensor:
        if labels is None:
            labels = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(labels)  # (N, D)


def check_square_input(x: Tensor, in_channels: int, image_size: int, name: str) -> None:
    """Fail with the expected shape rather than a reshape error deep in the network."""
    if x.ndim != 4 or x.shape[1:] != (in_channels, image_size, image_size):
        raise ValueError(
            f"{name} expects input (N, {in_channels}, {image_size}, {image_size}), "
            f"got {tuple(x.shape)}"
        )
