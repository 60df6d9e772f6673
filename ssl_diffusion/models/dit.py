"""DiT denoiser with adaLN-Zero conditioning (Peebles & Xie 2023) and DDAE++ self-conditioning.

Condition vector c = t_emb(noise label) + class_emb(label or null) [+ aug_emb(aug params)] drives
every block through adaLN-Zero (shift/scale/gate from SiLU(c)). With self-conditioning the
pooled output of block k is turned into s (``selfcond.py``) and the blocks after k (``targets``)
and the final layer use c' = c + s (DDAE++ spec §2.2b, "less than 10 lines").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.models.base import Denoiser, DenoiserOutput, arm_module_rng
from ssl_diffusion.models.config import SelfCondConfig
from ssl_diffusion.models.layers import (
    Attention,
    LabelEmbedding,
    Mlp,
    PatchEmbed,
    check_square_input,
    sincos_pos_embed_2d,
    timestep_embedding,
    unpatchify,
)
from ssl_diffusion.models.lightning_blocks import FFNS, NORMS, RopeAttention, SwiGLU, make_norm
from ssl_diffusion.models.presets import DIT_PRESETS
from ssl_diffusion.models.selfcond import SelfConditioning

__all__ = ["DIT_PRESETS", "DiT", "DiTBlock", "TimestepEmbedder"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN affine: x * (1 + scale) + shift, with (N, 1, D) shift/scale broadcast over tokens."""
    return torch.addcmul(shift, x, 1 + scale)


class TimestepEmbedder(nn.Module):
    """Float noise label -> sinusoid (freq_dim) -> Linear-SiLU-Linear -> (N, D)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose LayerNorm affine and residual gates come from c."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 norm: str = "layernorm", ffn: str = "gelu", rope: bool = False,
                 qk_norm: bool = False, grid: int = 0):
        super().__init__()
        # LightningDiT options (lightning_blocks.py): RMSNorm, SwiGLU, 2-D RoPE, qk-norm.
        self.norm1 = make_norm(norm, dim)
        self.attn = (RopeAttention(dim, heads, grid, rope, qk_norm) if rope or qk_norm
                     else Attention(dim, heads, qkv_bias=True))
        self.norm2 = make_norm(norm, dim)
        self.mlp = (SwiGLU(dim, mlp_ratio, dropout) if ffn == "swiglu"
                    else Mlp(dim, int(dim * mlp_ratio), approx_gelu=True, dropout=dropout))
        self.adaLN = nn.Linear(dim, 6 * dim)  # zero-init: every block starts as the identity

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        """x: (N, T, D) tokens; c_act: (N, D) = SiLU(c), shared by all blocks of a segment."""
        mod = self.adaLN(c_act)[:, None]  # (N, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # 6 x (N, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # (N, T, D)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + Linear to p*p*C values per token (zero-init output)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, norm: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.adaLN = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        shift, scale = self.adaLN(c_act)[:, None].chunk(2, dim=-1)  # 2 x (N, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, T, p*p*C)


class DiT(Denoiser):
    """Diffusion transformer; layer names ``block0..block{depth-1}``, output channels = input."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        depth: int,
        width: int,
        heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int = 0,
        aug_dim: int = 0,
        selfcond: SelfCondConfig | None = None,
        norm: str = "layernorm",
        ffn: str = "gelu",
        rope: bool = False,
        qk_norm: bool = False,
    ):
        super().__init__()
        if norm not in NORMS or ffn not in FFNS:
            raise UserError(f"model.norm={norm} / model.ffn={ffn} invalid; valid norms: "
                            f"{', '.join(NORMS)}; ffns: {', '.join(FFNS)}")
        if rope and (width // max(heads, 1)) % 4:
            raise UserError(f"model.rope=true needs a head dim (width/heads = {width}/{heads}) "
                            f"divisible by 4; change model.width or model.heads")
        if image_size % patch_size:
            raise UserError(
                f"image size {image_size} is not divisible by the DiT patch size {patch_size}; "
                f"choose model.patch_size from the divisors of {image_size}"
            )
        if width % heads or width % 4:
            raise UserError(
                f"DiT width {width} must be divisible by heads={heads} and by 4 (2-D pos-embed)"
            )
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.grid = image_size // patch_size
        self.x_embed = PatchEmbed(in_channels, width, patch_size)
        # Fixed sin-cos positions (not learned, not saved): recomputed for any resolution.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(width, self.grid)[None], persistent=False
        )  # (1, T, D)
        self.t_embed = TimestepEmbedder(width)
        self.y_embed = LabelEmbedding(num_classes, width)
        self.blocks = nn.ModuleList(
            DiTBlock(width, heads, mlp_ratio, dropout, norm, ffn, rope, qk_norm, self.grid)
            for _ in range(depth)
        )
        self.final = FinalLayer(width, patch_size, in_channels, norm)

        self.layer_names = [f"block{i}" for i in range(depth)]
        self.feature_dims = {name: width for name in self.layer_names}
        self.default_source_layer = f"block{max(depth // 2 - 1, 0)}"  # middle of the network
        # feature tap for layer="auto": the first block after the SC source (DDAE used block
        # 13 of 28 for DiT-XL/2); the layer x noise sweep picks the best one on validation.
        self.default_feature_layer = f"block{min(depth // 2, depth - 1)}"
        self.selfcond: SelfConditioning | None = None
        self.sc_source = self.sc_first_target = -1
        self.initialize_weights()  # base network first: the same draws in every arm
        self.aug_embed: nn.Linear | None = None
        if aug_dim > 0:
            with arm_module_rng("aug_embed"):
                # Bias-free, so all-zero aug labels (sampling time) contribute nothing (EDM).
                self.aug_embed = nn.Linear(aug_dim, width, bias=False)
                nn.init.xavier_uniform_(self.aug_embed.weight)
        if selfcond is not None and selfcond.enabled:
            with arm_module_rng("selfcond"):
                self._setup_selfcond(selfcond, width)

    def _setup_selfcond(self, cfg: SelfCondConfig, width: int) -> None:
        cfg.validate()
        if cfg.pool == "cls":
            raise UserError(
                "selfcond.pool=cls needs a global token, which DiT has none of; "
                "use selfcond.pool=mean or attn (cls works with model.arch=uvit)"
            )
        depth = len(self.blocks)
        self.sc_source = self.layer_names.index(self.resolve_source_layer(cfg.source_layer))
        # Target index `depth` is the final layer, which always receives s.
        first = {"all": self.sc_source + 1, "decoder": max(self.sc_source + 1, depth // 2)}
        self.sc_first_target = first.get(cfg.targets, depth)
        self.selfcond = SelfConditioning(cfg, width, width, width, linear_init="xavier")

    def initialize_weights(self) -> None:
        """DiT init: xavier Linear, N(0, .02) embeddings, zero adaLN and output (adaLN-Zero)."""
        for m in self.modules():  # called before the arm-specific modules exist
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the flat patch
        nn.init.zeros_(self.x_embed.proj.bias)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for layer in [blk.adaLN for blk in self.blocks] + [self.final.adaLN, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        aug_labels: Tensor | None = None,
        taps: Sequence[str] | str = (),
        stop_after: str | None = None,
    ) -> DenoiserOutput:
        check_square_input(x, self.in_channels, self.image_size, "DiT")
        wanted, last = self.resolve_taps(taps, stop_after)
        n = x.shape[0]
        h = self.x_embed(x) + self.pos_embed  # (N, T, D)
        t_emb = self.t_embed(noise_labels)  # (N, D)
        c = t_emb + self.y_embed(class_labels, n, x.device)  # (N, D)
        if self.aug_embed is not None and aug_labels is not None:
            c = c + self.aug_embed(aug_labels.to(c.dtype))  # (N, D)
        c_act = F.silu(c)  # (N, D): computed once per segment instead of once per block
        feats: dict[str, Tensor] = {}
        sc = None
        for i in range(last + 1):
            if sc is not None and i == self.sc_first_target:
                c_act = F.silu(c + sc.s)  # DDAE++: later blocks see c' = c + s
            h = self.blocks[i](h, c_act)  # (N, T, D)
            if self.layer_names[i] in wanted:
                feats[self.layer_names[i]] = h.mean(dim=1)  # (N, D)
            if i == self.sc_source:
                sc = self.selfcond(h, t_emb)
        out = DenoiserOutput.from_blocks(feats, sc)
        if last < len(self.blocks) - 1:
            return out
        if sc is not None and self.sc_first_target == len(self.blocks):
            c_act = F.silu(c + sc.s)  # targets="final" (or source = last block)
        y = self.final(h, c_act)  # (N, T, p*p*C)
        out.pred = unpatchify(y, self.in_channels, self.patch_size, self.grid)  # (N, C, H, W)
        return out
