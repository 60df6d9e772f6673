"""DDPM / DDPM++ UNet (Ho et al. 2020; Song et al. 2021) as used by DDAE, with DDAE++ self-conditioning.

Layout follows the DDAE networks (FutureXiang/ddae ``model/unet.py``) so that the presets have
the published sizes (35.746M and 56.524M parameters at 32 px, 3 channels):
- embedding: sinusoid(width) [+ bias-free Linear(aug labels)] -> Linear-SiLU-Linear to 4*width,
  plus a class table (num_classes + 1 rows, last = null) when class-conditional;
- ResBlock: GN-SiLU-conv, + Linear(SiLU(emb)) added per channel, GN-SiLU-dropout-conv, skip;
- single-head self-attention at the ``attn_resolutions`` and in the middle block;
- encoder outputs are concatenated into the decoder (skips); up/down sampling by conv
  (DDPM) or by BigGAN-style ResBlocks (DDPM++);
- final GN(8)-SiLU-conv to the input channel count.

Layer names: ``enc{i}`` (encoder ResBlocks), ``down{j}``, ``mid``, ``dec{i}`` (decoder ResBlocks;
``dec{k-1}`` is DDAE's ``out_k``), ``up{j}``. Self-conditioning adds s to the embedding given to
the layers after the source (spec §2.2a); the skips are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.models.base import Denoiser, DenoiserOutput, arm_module_rng
from ssl_diffusion.models.config import SelfCondConfig
from ssl_diffusion.models.layers import LabelEmbedding, check_square_input, timestep_embedding
from ssl_diffusion.models.presets import UNET_PRESETS
from ssl_diffusion.models.selfcond import SelfConditioning

__all__ = ["UNET_PRESETS", "AttnBlock", "ResBlock", "UNet"]


class TimeEmbedding(nn.Module):
    """Noise label (+ aug labels, in sinusoid space as in DDAE/EDM) -> (N, 4*width)."""

    def __init__(self, width: int, emb_dim: int, aug_dim: int = 0):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.aug: nn.Linear | None = None
        if aug_dim > 0:
            with arm_module_rng("aug_embed"):  # only some arms have it: keep base draws paired
                self.aug = nn.Linear(aug_dim, width, bias=False)

    def forward(self, t: Tensor, aug_labels: Tensor | None) -> Tensor:
        emb = timestep_embedding(t, self.width)  # (N, width)
        if self.aug is not None and aug_labels is not None:
            emb = emb + self.aug(aug_labels.float())  # zero labels add exactly zero
        return self.mlp(emb)  # (N, emb_dim)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + per-channel embedding, GN-SiLU-dropout-conv, residual (optionally resampling)."""

    def __init__(
        self, c_in: int, c_out: int, emb_dim: int, dropout: float, resample: str | None = None
    ):
        super().__init__()
        self.resample = resample  # None, "up" or "down" (BigGAN style: inside the block)
        self.norm1 = nn.GroupNorm(32, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(32, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.norm1(x)))  # (N, C_in, H', W')
        h = self.conv1(h) + self.emb(F.silu(emb))[:, :, None, None]  # (N, C_out, H', W')
        h = self.conv2(self.drop(F.silu(self.norm2(h))))  # (N, C_out, H', W')
        return h + self.skip(self._resample(x))


class AttnBlock(nn.Module):
    """GroupNorm + multi-head self-attention over the H*W positions (SDPA), residual."""

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise UserError(f"UNet channels {channels} are not divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(32, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, hh, ww = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        qkv = self.qkv(t).reshape(n, hh * ww, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, heads, HW, d)
        a = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, d)
        a = self.proj(a.transpose(1, 2).reshape(n, hh * ww, c))  # (N, HW, C)
        return x + a.transpose(1, 2).reshape(n, c, hh, ww)


class ResAttBlock(nn.Module):
    """One named UNet layer: a ResBlock, then attention at the attention resolutions."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attn: bool, heads: int):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = AttnBlock(c_out, heads) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class MidBlock(nn.Module):
    """ResBlock - attention - ResBlock at the lowest resolution."""

    def __init__(self, channels: int, emb_dim: int, dropout: float, heads: int):
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, dropout)
        self.attn = AttnBlock(channels, heads)
        self.res2 = ResBlock(channels, channels, emb_dim, dropout)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x, emb)), emb)


class ConvResample(nn.Module):
    """DDPM up/down sampling by a 3x3 conv (stride 2, or after nearest upsampling); no embedding."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if mode == "down" else 1, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.mode == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


class UNet(Denoiser):
    """DDPM/DDPM++ UNet; every layer is called as ``layer(h, emb)`` in ``layer_names`` order."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        width: int,
        channel_mult: Sequence[int],
        depth: int,
        attn_resolutions: Sequence[int],
        heads: int = 1,
        dropout: float = 0.1,
        resample: str = "conv",
        num_classes: int = 0,
        aug_dim: int = 0,
        selfcond: SelfCondConfig | None = None,
    ):
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise UserError(
                f"image size {image_size} is not divisible by the UNet downsampling factor "
                f"{factor} (channel_mult has {len(channel_mult)} levels); use fewer levels"
            )
        if resample not in ("conv", "res"):
            raise UserError(f"model.resample `{resample}` is invalid; valid: conv, res")
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = 4 * width
        self.time_embed = TimeEmbedding(width, emb_dim, aug_dim)
        # Unconditional nets have no class path, which keeps DDAE's exact parameter counts.
        self.y_embed = LabelEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)

        layers, names, dims, kinds = [], [], [], []

        def add(name: str, layer: nn.Module, dim: int, kind: str) -> None:
            layers.append(layer)
            names.append(name)
            dims.append(dim)
            kinds.append(kind)

        def resampler(ch: int, mode: str) -> nn.Module:
            if resample == "res":
                return ResBlock(ch, ch, emb_dim, dropout, resample=mode)
            return ConvResample(ch, mode)

        skip_dims, ch, res = [width], width, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(depth):
                out = width * mult
                block = ResAttBlock(ch, out, emb_dim, dropout, res in attn_resolutions, heads)
                add(f"enc{kinds.count('enc')}", block, out, "enc")
                skip_dims.append(out)
                ch = out
            if level < len(channel_mult) - 1:
                add(f"down{kinds.count('down')}", resampler(ch, "down"), ch, "down")
                skip_dims.append(ch)
                res //= 2
        add("mid", MidBlock(ch, emb_dim, dropout, heads), ch, "mid")
        for level in reversed(range(len(channel_mult))):
            for _ in range(depth + 1):
                out = width * channel_mult[level]
                block = ResAttBlock(
                    ch + skip_dims.pop(), out, emb_dim, dropout, res in attn_resolutions, heads
                )
                add(f"dec{kinds.count('dec')}", block, out, "dec")
                ch = out
            if level > 0:
                add(f"up{kinds.count('up')}", resampler(ch, "up"), ch, "up")
                res *= 2
        self.layers = nn.ModuleList(layers)
        self.kinds = kinds
        self.out_norm = nn.GroupNorm(8, ch)
        self.out_conv = nn.Conv2d(ch, in_channels, 3, padding=1)

        self.layer_names = names
        self.feature_dims = dict(zip(names, dims))
        self.default_source_layer = "mid"  # the bottleneck: middle of the network
        # feature tap for layer="auto": 43% into the decoder = DDAE's defaults (out_7 = dec6 of
        # the 15 DDPM++ decoder blocks, out_6 = dec5 of the 12 DDPM ones).
        dec = [n for n in self.layer_names if n.startswith("dec")]
        self.default_feature_layer = dec[int(len(dec) * 0.43)]
        self.selfcond: SelfConditioning | None = None
        self.sc_source = self.sc_first_target = -1
        if selfcond is not None and selfcond.enabled:
            with arm_module_rng("selfcond"):
                self._setup_selfcond(selfcond, emb_dim)

    def _setup_selfcond(self, cfg: SelfCondConfig, emb_dim: int) -> None:
        cfg.validate()
        if cfg.pool == "cls" or cfg.targets == "final":
            bad = "pool=cls" if cfg.pool == "cls" else "targets=final"
            raise UserError(
                f"selfcond.{bad} is not available for the UNet (no global token / its final "
                "layer takes no embedding); use pool=mean|attn and targets=all|decoder"
            )
        k = self.layer_names.index(self.resolve_source_layer(cfg.source_layer))
        first = k + 1
        if cfg.targets == "decoder":
            first = max(first, self.kinds.index("mid") + 1)
        # Conv resamplers take no embedding: at least one later layer must be able to use s.
        if not any(isinstance(m, (ResAttBlock, MidBlock, ResBlock)) for m in self.layers[first:]):
            raise UserError(
                f"selfcond.source_layer `{cfg.source_layer}` leaves no later layer to condition; "
                f"pick an earlier layer, e.g. `{self.default_source_layer}`"
            )
        self.sc_source, self.sc_first_target = k, first
        feat_dim = self.feature_dims[self.layer_names[k]]
        self.selfcond = SelfConditioning(cfg, feat_dim, emb_dim, emb_dim)

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        aug_labels: Tensor | None = None,
        taps: Sequence[str] | str = (),
        stop_after: str | None = None,
    ) -> DenoiserOutput:
        check_square_input(x, self.in_channels, self.image_size, "UNet")
        wanted, last = self.resolve_taps(taps, stop_after)
        t_emb = self.time_embed(noise_labels, aug_labels)  # (N, E)
        emb = t_emb
        if self.y_embed is not None:
            emb = emb + self.y_embed(class_labels, x.shape[0], x.device)  # (N, E)
        h = self.stem(x)  # (N, width, H, W)
        skips = [h]
        feats: dict[str, Tensor] = {}
        sc = None
        for i in range(last + 1):
            if sc is not None and i == self.sc_first_target:
                emb = emb + sc.s  # DDAE++: later layers see emb + s; skips stay as they are
            if self.kinds[i] == "dec":
                h = torch.cat([h, skips.pop()], dim=1)  # (N, C + C_skip, H', W')
            h = self.layers[i](h, emb)  # (N, C', H', W')
            if self.kinds[i] in ("enc", "down"):
                skips.append(h)
            name = self.layer_names[i]
            if name in wanted:
                feats[name] = h.mean(dim=(2, 3))  # (N, C')
            if i == self.sc_source:
                sc = self.selfcond(h.flatten(2).transpose(1, 2), t_emb)  # pool over H*W
        out = DenoiserOutput.from_blocks(feats, sc)
        if last == len(self.layers) - 1:
            out.pred = self.out_conv(F.silu(self.out_norm(h)))  # (N, C_in, H, W)
        return out
