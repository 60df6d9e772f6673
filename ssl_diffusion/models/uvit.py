"""U-ViT denoiser (Bao et al. 2023) as in the DDAE++ author's CIFAR code, with self-conditioning.

Conditioning is by tokens: a sinusoidal time token (plus a bias-free projection of the aug
labels) and, for class-conditional models, a label token (table with a null row) are prepended
to the patch tokens, with learned position embeddings. ``depth`` pre-LN blocks are split into
depth//2 in-blocks, one mid-block and depth//2 out-blocks; each out-block first fuses a long
skip from its mirrored in-block with Linear(2D -> D). A final LayerNorm + Linear + 3x3 conv
maps patch tokens back to pixels. UViT-S/2 at 32 px has 44,255,328 parameters (author's code).

Self-conditioning (spec §2.2c, [INF]): s is pooled from the *patch* tokens of the source
block and either added to the time token (``uvit_mode="add_time"``, the default: exactly the
baseline at init with zero_init) or appended as an extra token (``"token"``; the extra token has
no long-skip partner, so its skip half is zero, and it is dropped before the output head).

``token`` mode is NOT the baseline at init, even with zero_init: the appended token is s = 0,
but it is still a key in every later block's attention, where its logit q.k = 0 adds exp(0) to
each softmax normaliser and shrinks the weights of the real tokens (and the blocks then write
into that token, so it is non-zero from the second target block on). Step 0 therefore differs
from ``ddae``: UViT-S/2 at 32 px, same seed, 4 random inputs: max |output difference| 1.9e-3,
mean 5.1e-4 (add_time: 0 exactly); docs/selfcond_defaults.md and
``tests/models/test_selfcond.py::test_uvit_step0_exact_for_add_time_but_not_for_token_mode``.
Making it exact would need a gated or masked attention path, which the author's U-ViT does not
have; use ``add_time`` for paired comparisons that rely on an identical step 0.
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
    timestep_embedding,
    unpatchify,
)
from ssl_diffusion.models.presets import UVIT_PRESETS
from ssl_diffusion.models.selfcond import SelfConditioning

__all__ = ["UVIT_PRESETS", "UViT", "UViTBlock"]


class UViTBlock(nn.Module):
    """Pre-LN transformer block; out-blocks first fuse the long skip with Linear(2D -> D)."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, long_skip: bool = False
    ):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if long_skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (N, T, D)
        x = x + self.attn(self.norm1(x))  # (N, T, D)
        return x + self.mlp(self.norm2(x))  # (N, T, D)


class UViT(Denoiser):
    """U-ViT; layer names ``in0..``, ``mid``, ``out0..``; features pool the patch tokens only."""

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
    ):
        super().__init__()
        if depth % 2 == 0:
            raise UserError(
                f"UViT depth {depth} must be odd (depth//2 in-blocks + 1 mid + depth//2 "
                f"out-blocks); use {depth + 1} or {depth - 1}"
            )
        if image_size % patch_size:
            raise UserError(
                f"image size {image_size} is not divisible by the UViT patch size {patch_size}"
            )
        if width % heads:
            raise UserError(f"UViT width {width} is not divisible by heads={heads}")
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.width, self.grid = width, image_size // patch_size
        self.num_patches = self.grid**2
        self.patch_embed = PatchEmbed(in_channels, width, patch_size)
        # Unconditional nets carry no label token (author's code): only the time token.
        self.y_embed = LabelEmbedding(num_classes, width) if num_classes > 0 else None
        self.extras = 1 + (self.y_embed is not None)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.num_patches, width))
        half = depth // 2
        self.blocks = nn.ModuleList(
            [UViTBlock(width, heads, mlp_ratio, dropout) for _ in range(half + 1)]
            + [UViTBlock(width, heads, mlp_ratio, dropout, long_skip=True) for _ in range(half)]
        )
        self.out_norm = nn.LayerNorm(width)
        self.out_linear = nn.Linear(width, patch_size**2 * in_channels)
        self.out_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

        self.layer_names = (
            [f"in{i}" for i in range(half)] + ["mid"] + [f"out{i}" for i in range(half)]
        )
        self.feature_dims = {name: width for name in self.layer_names}
        self.default_source_layer = "mid"
        self.default_feature_layer = "mid"  # layer="auto" feature tap (the long-skip bottleneck)
        self.selfcond: SelfConditioning | None = None
        self.sc_source = self.sc_first_target = -1
        self.sc_mode = "add_time"
        self.initialize_weights()  # base network first: the same draws in every arm
        self.aug_embed: nn.Linear | None = None
        if aug_dim > 0:
            with arm_module_rng("aug_embed"):
                # Bias-free projection of the aug labels into the time token (zero aug -> +0).
                self.aug_embed = nn.Linear(aug_dim, width, bias=False)
                nn.init.trunc_normal_(self.aug_embed.weight, std=0.02)
        if selfcond is not None and selfcond.enabled:
            with arm_module_rng("selfcond"):
                self._setup_selfcond(selfcond)

    def _setup_selfcond(self, cfg: SelfCondConfig) -> None:
        cfg.validate()
        if cfg.targets == "final":
            raise UserError(
                "selfcond.targets=final is not available for the UViT (its output head reads "
                "no condition); use targets=all or decoder"
            )
        k = self.layer_names.index(self.resolve_source_layer(cfg.source_layer))
        first = k + 1
        if cfg.targets == "decoder":
            first = max(first, self.layer_names.index("mid") + 1)
        if first >= len(self.blocks):
            raise UserError(
                f"selfcond.source_layer `{cfg.source_layer}` is the last block, which leaves "
                f"nothing to condition; pick an earlier layer, e.g. `{self.default_source_layer}`"
            )
        self.sc_source, self.sc_first_target, self.sc_mode = k, first, cfg.uvit_mode
        self.selfcond = SelfConditioning(cfg, self.width, self.width, self.width, "xavier")

    def initialize_weights(self) -> None:
        """Truncated-normal(0.02) Linear weights and positions, zero biases (U-ViT / ViT init)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():  # called before the arm-specific modules exist
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _inject(self, h: Tensor, s: Tensor) -> Tensor:
        if self.sc_mode == "token":
            return torch.cat([h, s[:, None].to(h.dtype)], dim=1)  # (N, T+1, D): s as a token
        return torch.cat([h[:, :1] + s[:, None], h[:, 1:]], dim=1)  # (N, T, D): time token += s

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        aug_labels: Tensor | None = None,
        taps: Sequence[str] | str = (),
        stop_after: str | None = None,
    ) -> DenoiserOutput:
        check_square_input(x, self.in_channels, self.image_size, "UViT")
        wanted, last = self.resolve_taps(taps, stop_after)
        n, e, length = x.shape[0], self.extras, self.num_patches
        patches = self.patch_embed(x)  # (N, L, D)
        t_emb = timestep_embedding(noise_labels, self.width).to(patches.dtype)  # (N, D)
        time_tok = t_emb
        if self.aug_embed is not None and aug_labels is not None:
            time_tok = time_tok + self.aug_embed(aug_labels.to(t_emb.dtype))  # zero aug -> +0
        extra = [time_tok[:, None]]
        if self.y_embed is not None:
            extra.append(self.y_embed(class_labels, n, x.device)[:, None].to(patches.dtype))
        h = torch.cat(extra + [patches], dim=1) + self.pos_embed  # (N, E+L, D)
        skips: list[Tensor] = []
        half = len(self.blocks) // 2
        feats: dict[str, Tensor] = {}
        sc = None
        for i in range(last + 1):
            if sc is not None and i == self.sc_first_target:
                h = self._inject(h, sc.s)
            skip = None
            if i > half:
                skip = skips.pop()  # mirrored in-block output
                if skip.shape[1] < h.shape[1]:  # the SC token has no skip partner: zeros
                    skip = F.pad(skip, (0, 0, 0, h.shape[1] - skip.shape[1]))
            h = self.blocks[i](h, skip)  # (N, T, D)
            if i < half:
                skips.append(h)
            if self.layer_names[i] in wanted:
                feats[self.layer_names[i]] = h[:, e : e + length].mean(dim=1)  # (N, D)
            if i == self.sc_source:
                sc = self.selfcond(h[:, e : e + length], t_emb, cls_token=h[:, 0])
        out = DenoiserOutput.from_blocks(feats, sc)
        if last == len(self.blocks) - 1:
            y = self.out_linear(self.out_norm(h[:, e : e + length]))  # (N, L, p*p*C)
            y = unpatchify(y, self.in_channels, self.patch_size, self.grid)  # (N, C, H, W)
            out.pred = self.out_conv(y)
        return out
