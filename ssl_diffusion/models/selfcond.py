"""DDAE++ self-conditioning: a network conditions its own later layers on its pooled features.

Spec §2.2/§2.8 (Xiang et al. 2025, arXiv 2505.10999; exact equations not public, [INF]):

    z = pool(h_k)                      # global vector of the source layer k, (N, C_src)
    s = g(t) * MLP(norm(z))            # (N, D_cond); g = time-adaptive scale
    cond' = cond + s                   # every later (target) layer sees cond'

It runs inside the same forward pass (one extra pooling + a small MLP), so it is *not* the
x0 self-conditioning of Chen et al. 2022, costs no extra network evaluation and is present in
both classifier-free-guidance branches (each branch computes s from its own input).

One module serves DiT (cond = adaLN vector), UNet (cond = ResBlock embedding) and UViT
(cond = time token, or an extra token). With ``zero_init`` the output s is exactly zero at
initialisation, so a self-conditioned model starts as the baseline (adaLN-Zero argument).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ssl_diffusion.models.config import SelfCondConfig


@dataclass
class SelfCondOutput:
    """Named outputs of the self-conditioning module."""

    z: Tensor  # (N, C_src) pooled source feature; keeps its gradient even when cfg.detach
    s: Tensor  # (N, D_cond) signal added to the condition of the target layers


class SelfConditioning(nn.Module):
    """pool -> (LayerNorm) -> MLP -> time-adaptive scale g(t) -> s.

    Args:
        cfg: the self-conditioning knobs.
        feat_dim: channels C_src of the source layer.
        cond_dim: width D_cond of the condition that receives s.
        time_dim: width of the time embedding that drives g(t).
        linear_init: "xavier" (DiT/UViT convention) or "torch" (PyTorch default, DDAE UNet).
    """

    def __init__(
        self,
        cfg: SelfCondConfig,
        feat_dim: int,
        cond_dim: int,
        time_dim: int,
        linear_init: Literal["torch", "xavier"] = "torch",
    ):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.cond_dim = cond_dim  # width of s (the condition it is added to)
        self.pool_kind = cfg.pool
        # Attention pooling with one learned query; zero query = uniform weights = mean pooling
        # at init, so the pooled vector starts from the DDAE/GAP feature and learns to focus.
        self.query = nn.Parameter(torch.zeros(feat_dim)) if cfg.pool == "attn" else None
        self.norm = nn.LayerNorm(feat_dim) if cfg.norm == "ln" else nn.Identity()
        width = cfg.mlp_width or max(cond_dim // 2, 1)  # default: half the cond dim
        dims = [feat_dim] + [width] * (cfg.mlp_depth - 1) + [cond_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                layers.append(nn.SiLU())
            layers.append(nn.Linear(d_in, d_out))
        self.mlp = nn.Sequential(*layers)
        # g(t) reads the time embedding through SiLU like an adaLN modulation layer.
        out = {"vector": cond_dim, "scalar": 1}.get(cfg.time_scale)
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out)) if out else None
        self.reset_parameters(linear_init)

    def reset_parameters(self, linear_init: Literal["torch", "xavier"] = "torch") -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                if linear_init == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
        if self.gate is not None:
            self.gate[1].reset_parameters()
        if self.query is not None:
            nn.init.zeros_(self.query)
        if self.cfg.zero_init:
            # Zero the factor that multiplies everything: g when it exists, else the MLP output.
            last = self.gate[1] if self.gate is not None else self.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def pool(self, tokens: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """(N, L, C) tokens (or flattened H*W positions) -> (N, C) global vector."""
        if self.pool_kind == "mean":
            return tokens.mean(dim=1)  # (N, C)
        if self.pool_kind == "cls":
            if cls_token is None:
                raise ValueError("pool='cls' needs the architecture to pass its global token")
            return cls_token  # (N, C)
        scores = tokens @ self.query.to(tokens.dtype) / math.sqrt(tokens.shape[-1])  # (N, L)
        weights = scores.softmax(dim=1)  # (N, L)
        return torch.einsum("nl,nlc->nc", weights, tokens)  # (N, C)

    def scale(self, t_emb: Tensor) -> Tensor | float:
        """Time-adaptive scale g(t): (N, D_cond), (N, 1) or the constant 1."""
        if self.gate is None:
            return 1.0
        g = self.gate(t_emb)  # (N, D_cond) or (N, 1)
        # A bounded scalar gate reads as "how much to trust the pooled semantics at this noise".
        return torch.tanh(g) if self.cfg.time_scale == "scalar" else g

    def forward(
        self, tokens: Tensor, t_emb: Tensor, cls_token: Tensor | None = None
    ) -> SelfCondOutput:
        """tokens: (N, L, C_src) source-layer output; t_emb: (N, time_dim); -> z, s."""
        z = self.pool(tokens, cls_token)  # (N, C_src)
        if self.cfg.detach:
            # Stop-gradient only on the s path: z itself stays attached for other losses.
            z_in = self.pool(tokens.detach(), None if cls_token is None else cls_token.detach())
        else:
            z_in = z
        s = self.mlp(self.norm(z_in)) * self.scale(t_emb)  # (N, D_cond)
        if self.training and self.cfg.drop_prob > 0:
            keep = torch.rand(s.shape[0], 1, device=s.device) >= self.cfg.drop_prob  # (N, 1)
            s = s * keep.to(s.dtype)
        return SelfCondOutput(z=z, s=s)
