"""LightningDiT-style transformer parts: RMSNorm, SwiGLU FFN, 2-D RoPE and qk-norm attention.

LightningDiT (Yao et al. 2025, hustvl/LightningDiT; DDAE++ spec §7.2) modernises the DiT block
with RMSNorm instead of LayerNorm, a SwiGLU feed-forward, 2-D rotary position embeddings in
self-attention and (optionally) RMS-normalised queries/keys. ``DiT`` switches them on with the
config keys ``model.norm`` (layernorm | rmsnorm), ``model.ffn`` (gelu | swiglu), ``model.rope``
and ``model.qk_norm``; the ``LightningDiT-*`` presets in ``presets.py`` set them together.

Equations (D = width, d = head dim, positions (r, c) on the token grid, row-major):
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * w            (w = 1 at init, or no w)
    SwiGLU(x)    = W3 (SiLU(W1 x) * (W2 x)),  hidden = int(2/3 * mlp_ratio * D)
    RoPE(q)      : the first d/2 channels rotate with the row r, the last d/2 with the column c;
                   within each half, the channel pair (2i, 2i+1) rotates by pos * theta^(-2i/(d/2))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROPE_THETA = 10000.0  # base of the rotary frequencies (RoFormer / EVA-02 / LightningDiT)
NORMS = ("layernorm", "rmsnorm")
FFNS = ("gelu", "swiglu")


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (Zhang & Sennrich 2019); optional learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = _upcast(x)  # statistics in at least float32 (bf16 autocast)
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)  # (..., D)
        return y * self.weight if self.weight is not None else y


def make_norm(kind: str, dim: int) -> nn.Module:
    """The pre-adaLN norm of a DiT block: no learned affine (adaLN supplies shift and scale)."""
    if kind == "rmsnorm":
        return RMSNorm(dim, affine=False)
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): W3 (SiLU(W1 x) * W2 x); 2/3 width keeps the FLOPs of
    a GELU MLP with the same ``mlp_ratio`` (LLaMA / LightningDiT convention)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(2 * dim * mlp_ratio / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)  # W1 and W2 in one matmul
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)  # 2 x (N, T, hidden)
        return self.w3(self.drop(F.silu(a) * b))  # (N, T, D)


def rope_2d_angles(head_dim: int, grid: int, theta: float = ROPE_THETA) -> Tensor:
    """Rotation angles (grid*grid, head_dim/2) of the 2-D axial RoPE, row-major token order."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4  # pairs per axis
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (d/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (G, G) each
    ang_r = rows.reshape(-1, 1) * freqs  # (T, d/4)
    ang_c = cols.reshape(-1, 1) * freqs  # (T, d/4)
    return torch.cat([ang_r, ang_c], dim=1)  # (T, d/2) float64: pair j's angle


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) of x (N, H, T, d) by angles (T, d/2)."""
    x1, x2 = _upcast(x).unflatten(-1, (-1, 2)).unbind(-1)  # 2 x (N, H, T, d/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (N, H, T, d/2, 2)
    return out.flatten(-2).to(x.dtype)  # (N, H, T, d)


class RopeAttention(nn.Module):
    """Multi-head self-attention with optional 2-D RoPE on q/k and optional RMS qk-norm."""

    def __init__(self, dim: int, heads: int, grid: int, rope: bool = True, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.rope = rope
        if rope:
            ang = rope_2d_angles(head_dim, grid)  # (T, d/2)
            # Fixed tables, recomputed from the grid (not saved in checkpoints).
            self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
            self.register_buffer("rope_sin", ang.sin().float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)  # (N, T, 3, H, d_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, d_h)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q = apply_rope(q, self.rope_cos, self.rope_sin)  # (N, H, T, d_h)
            k = apply_rope(k, self.rope_cos, self.rope_sin)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, d_h)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


__all__ = ["FFNS", "NORMS", "RMSNorm", "RopeAttention", "SwiGLU", "apply_rope", "make_norm",
           "rope_2d_angles"]
