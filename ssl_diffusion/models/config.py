"""Typed, torch-free configuration of the denoiser and of DDAE++ self-conditioning.

``ModelConfig`` picks an architecture and a size preset (``presets.py``); any override left at
None keeps the preset's value. ``SelfCondConfig`` exposes every self-conditioning knob of the
DDAE++ spec (§2.9) so the unknowns of the paper can be ablated. Values that need the built
model (e.g. the source layer name) are checked by ``build_denoiser``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ssl_diffusion.errors import UserError, did_you_mean
from ssl_diffusion.models.presets import ARCH_FIELDS, PRESETS

# fmt: off
_OVERRIDES = (
    "depth", "width", "heads", "patch_size", "dropout", "mlp_ratio",
    "channel_mult", "attn_resolutions", "resample", "norm", "ffn", "rope", "qk_norm",
)
# fmt: on


# The SD VAE that DiT uses (f8, 4 channels: 256 px -> 32x32x4); LightningDiT's VA-VAE f16d32
# (16x16x32) loads the same way where its folder is in diffusers' AutoencoderKL format [spec §7.2].
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


@dataclass
class VAEConfig:
    """The latent autoencoder of the latent path (``models/vae.py``; optional extra [latent])."""

    path: str = DEFAULT_VAE  # diffusers AutoencoderKL: a hub id (cached) or a local folder
    subfolder: str | None = None  # inside `path`, e.g. "vae" for a full pipeline folder
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # VAE compute dtype (GPU: fp16 ok)
    local_files_only: bool = True  # never download at run time; set false once to fetch a hub id


@dataclass
class ModelConfig:
    """Denoiser architecture: family + size preset + optional per-field overrides."""

    # DDAE++ uses UNet/UViT in pixel space and DiT in latent space; all three run on pixels.
    arch: Literal["dit", "unet", "uvit"] = "dit"  # denoiser family
    preset: str = "DiT-tiny"  # size preset name from DIT_/UNET_/UVIT_PRESETS of `arch`
    # Overrides (None = the preset's value):
    depth: int | None = None  # DiT blocks | UViT blocks (odd) | UNet res blocks per level
    width: int | None = None  # DiT/UViT: hidden size D; UNet: base channels
    heads: int | None = None  # attention heads (UNet: DDAE uses 1)
    patch_size: int | None = None  # DiT/UViT patch size in pixels (or latent cells)
    dropout: float | None = None  # UNet: in ResBlocks (DDAE 0.1, EDM 0.13); DiT/UViT: in the MLP
    mlp_ratio: float | None = None  # DiT/UViT: MLP hidden = mlp_ratio * D (default 4)
    channel_mult: list[int] | None = None  # UNet: channel multiplier per resolution level
    attn_resolutions: list[int] | None = None  # UNet: feature-map sizes (px) with self-attention
    resample: Literal["conv", "res"] | None = None  # UNet: conv (DDPM) | BigGAN ResBlock (DDPM++)
    # DiT block options of LightningDiT (models/lightning_blocks.py; None = the preset's value,
    # plain DiT: layernorm / gelu / no rope / no qk-norm):
    norm: Literal["layernorm", "rmsnorm"] | None = None  # pre-adaLN norm of every block
    ffn: Literal["gelu", "swiglu"] | None = None  # feed-forward: GELU MLP | SwiGLU (2/3 width)
    rope: bool | None = None  # 2-D rotary position embedding on queries/keys
    qk_norm: bool | None = None  # RMS-normalise queries and keys per head
    vae: VAEConfig = field(default_factory=VAEConfig)  # latent path only (data.name=latents)

    def validate(self) -> None:
        """Raise a one-line UserError for unknown presets or overrides the arch does not use."""
        if self.arch not in PRESETS:
            raise UserError(
                f"model.arch `{self.arch}` is unknown; valid: {', '.join(PRESETS)}"
                f"{did_you_mean(self.arch, PRESETS)}"
            )
        presets = PRESETS[self.arch]
        if self.preset not in presets:
            other = [a for a, p in PRESETS.items() if self.preset in p]
            hint = (
                f" (`{self.preset}` is a {other[0]} preset: set model.arch={other[0]})"
                if other
                else did_you_mean(self.preset, presets)
            )
            raise UserError(
                f"model.preset `{self.preset}` is not a {self.arch} preset; valid: "
                f"{', '.join(presets)}{hint}"
            )
        for name in _OVERRIDES:
            if getattr(self, name) is not None and name not in ARCH_FIELDS[self.arch]:
                raise UserError(
                    f"model.{name} does not apply to arch `{self.arch}`; it applies to "
                    f"{', '.join(a for a, f in ARCH_FIELDS.items() if name in f)} "
                    f"(remove the override or change model.arch)"
                )
        for name in ("depth", "width", "heads", "patch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"model.{name} must be >= 1, got {value}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def resolved(self) -> dict[str, Any]:
        """The preset's sizes with every non-None override applied."""
        self.validate()
        sizes = dict(PRESETS[self.arch][self.preset])
        for name in ARCH_FIELDS[self.arch]:
            value = getattr(self, name)
            if value is not None:
                sizes[name] = list(value) if isinstance(value, list) else value
        if self.arch == "unet":  # GroupNorm(32, C) needs every level's width divisible by 32
            bad = [sizes["width"] * m for m in sizes["channel_mult"] if (sizes["width"] * m) % 32]
            if bad:
                raise UserError(
                    f"model.width={sizes['width']} x channel_mult={sizes['channel_mult']} gives "
                    f"{bad[0]} channels, not a multiple of 32 (GroupNorm groups); use a multiple of 32"
                )
        elif sizes["width"] % sizes["heads"]:
            raise UserError(
                f"model.width={sizes['width']} is not divisible by model.heads={sizes['heads']}"
            )
        return sizes


@dataclass
class SelfCondConfig:
    """DDAE++ self-conditioning (spec §2): pool a source layer, MLP, time-adaptive scale, add to cond."""

    # Tags as in the spec: [INF] inferred default, [UNK] unknown in the paper (ablation knob).
    enabled: bool | None = None  # on/off; None = the method's default (ddaepp on, ddae off)
    source_layer: str = "auto"  # rerouted layer name; auto = arch default (mid-network) [INF]
    pool: Literal["mean", "attn", "cls"] = "mean"  # mean (spec §2.2) | attn | cls (UViT time tok)
    norm: Literal["none", "ln"] = "none"  # LayerNorm on the pooled vector (spec §2.2: none) [UNK]
    mlp_depth: int = 2  # Linear layers in the MLP (2 = Linear-SiLU-Linear, spec §2.2) [INF]
    # Hidden width of the MLP; None = half the cond dim, so the default costs <= 1% parameters
    # on DiT-S/2, DiT-B/2, DDPM++ and UViT-S/2 (docs/selfcond_defaults.md; spec: cond dim) [INF]
    mlp_width: int | None = None
    # g(t), spec §2.4 [INF]: vector = Linear(t_emb) per channel | scalar = tanh(Linear(t_emb)) | 1.
    # Default scalar: the vector gate alone adds D^2 parameters (1.37% on DiT-B/2 in total).
    time_scale: Literal["none", "vector", "scalar"] = "scalar"  # time-adaptive scale of s
    zero_init: bool = True  # zero g (or the last MLP layer if time_scale=none): step 0 = baseline
    detach: bool = False  # stop the s-path gradient into the source (spec §2.5: it flows) [UNK]
    targets: Literal["all", "decoder", "final"] = "all"  # later layers / 2nd half / DiT final only
    drop_prob: float = 0.0  # per-sample probability of zeroing s in training [UNK]
    # UViT: s added to the time token (exact baseline at init) | appended as an extra token (NOT
    # exact at init: the zero token still enters the attention softmax; models/uvit.py) [INF]
    uvit_mode: Literal["add_time", "token"] = "add_time"

    def validate(self) -> None:
        """Range checks that need no model; the source layer is checked by the builder."""
        choices = {
            "pool": ("mean", "attn", "cls"),
            "norm": ("none", "ln"),
            "time_scale": ("none", "vector", "scalar"),
            "targets": ("all", "decoder", "final"),
            "uvit_mode": ("add_time", "token"),
        }
        for name, valid in choices.items():
            value = getattr(self, name)
            if value not in valid:
                raise UserError(
                    f"selfcond.{name} `{value}` is invalid; valid: {', '.join(valid)}"
                    f"{did_you_mean(value, valid)}"
                )
        if self.mlp_depth < 1:
            raise UserError(f"selfcond.mlp_depth must be >= 1, got {self.mlp_depth}")
        if self.mlp_width is not None and self.mlp_width < 1:
            raise UserError(f"selfcond.mlp_width must be >= 1 or null, got {self.mlp_width}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise UserError(f"selfcond.drop_prob must be in [0, 1), got {self.drop_prob}")
