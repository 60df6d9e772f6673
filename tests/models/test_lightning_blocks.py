"""LightningDiT-style DiT block against an independent float64 numpy re-implementation.

The reference writes the equations out directly (RMSNorm, adaLN modulation, RoPE as a complex
rotation of channel pairs by (row, column) angles, softmax attention, SwiGLU, gated residuals)
and reads only the block's weight matrices; it shares no code with ``lightning_blocks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_diffusion.errors import UserError
from ssl_diffusion.models import ModelConfig, SelfCondConfig, build_denoiser
from ssl_diffusion.models.dit import DiTBlock
from ssl_diffusion.models.lightning_blocks import RMSNorm, SwiGLU

from .helpers import perturb


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _rms(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def _rope_ref(x: np.ndarray, grid: int) -> np.ndarray:
    """x (H, T, d): pairs (2j, 2j+1) as complex numbers z_j; the first d/4 rotate by
    row * 10000^(-j/(d/4)), the last d/4 by column * 10000^(-j/(d/4))."""
    d = x.shape[-1]
    z = x[..., 0::2] + 1j * x[..., 1::2]  # (H, T, d/2)
    q = d // 4
    inv = 10000.0 ** (-np.arange(q) / q)
    out = np.empty_like(z)
    for tok in range(grid * grid):
        r, c = divmod(tok, grid)
        ang = np.concatenate([r * inv, c * inv])  # (d/2,)
        out[:, tok] = z[:, tok] * np.exp(1j * ang)
    res = np.empty_like(x)
    res[..., 0::2], res[..., 1::2] = out.real, out.imag
    return res


def _block_ref(blk: DiTBlock, x: np.ndarray, c_act: np.ndarray, heads: int, grid: int,
               qk_norm: bool) -> np.ndarray:
    """One sample: x (T, D), c_act (D,) -> (T, D)."""
    lin = lambda m, v: v @ _np(m.weight).T + _np(m.bias)
    mod = lin(blk.adaLN, c_act)
    sh1, sc1, g1, sh2, sc2, g2 = np.split(mod, 6)
    t, d = x.shape
    hd = d // heads
    h = _rms(x) * (1 + sc1) + sh1
    qkv = lin(blk.attn.qkv, h).reshape(t, 3, heads, hd).transpose(1, 2, 0, 3)  # (3, H, T, hd)
    q, k, v = qkv
    if qk_norm:
        q = _rms(q) * _np(blk.attn.q_norm.weight)
        k = _rms(k) * _np(blk.attn.k_norm.weight)
    q, k = _rope_ref(q, grid), _rope_ref(k, grid)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(hd)  # (H, T, T)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    att = (w @ v).transpose(1, 0, 2).reshape(t, d)
    x = x + g1 * lin(blk.attn.proj, att)
    h = _rms(x) * (1 + sc2) + sh2
    ab = lin(blk.mlp.w12, h)
    a, b = np.split(ab, 2, axis=-1)
    silu = a / (1 + np.exp(-a))
    return x + g2 * lin(blk.mlp.w3, silu * b)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_lightning_block_matches_numpy_reference(qk_norm):
    torch.manual_seed(0)
    dim, heads, grid = 32, 2, 4
    blk = DiTBlock(dim, heads, 4.0, 0.0, norm="rmsnorm", ffn="swiglu", rope=True,
                   qk_norm=qk_norm, grid=grid).double()
    perturb(blk, scale=0.1)  # adaLN weights are non-zero here, and so are the qk-norm gains
    x = torch.randn(2, grid * grid, dim, dtype=torch.float64)
    c_act = torch.randn(2, dim, dtype=torch.float64)
    got = blk(x, c_act)
    for i in range(2):
        ref = _block_ref(blk, _np(x[i]), _np(c_act[i]), heads, grid, qk_norm)
        # the RoPE tables are stored in float32 (cos/sin computed in float64)
        np.testing.assert_allclose(_np(got[i]), ref, rtol=1e-6, atol=1e-6)


def test_rope_is_relative_in_both_axes():
    """q.k after RoPE depends only on the (row, col) offset of the two tokens."""
    from ssl_diffusion.models.lightning_blocks import apply_rope, rope_2d_angles

    grid, d = 5, 16
    ang = rope_2d_angles(d, grid).double()
    q = torch.randn(d, dtype=torch.float64).expand(1, 1, grid * grid, d)
    k = torch.randn(d, dtype=torch.float64).expand(1, 1, grid * grid, d)
    qr, kr = apply_rope(q, ang.cos(), ang.sin())[0, 0], apply_rope(k, ang.cos(), ang.sin())[0, 0]
    idx = lambda r, c: r * grid + c
    a = qr[idx(1, 2)] @ kr[idx(0, 0)]
    b = qr[idx(3, 4)] @ kr[idx(2, 2)]  # same offset (1, 2)
    c = qr[idx(2, 1)] @ kr[idx(0, 0)]  # transposed offset: differs
    assert torch.allclose(a, b, atol=1e-12)
    assert not torch.allclose(a, c, atol=1e-6)


def test_rmsnorm_and_swiglu_sizes():
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    y = RMSNorm(24, affine=False)(x)
    np.testing.assert_allclose(_np(y.pow(2).mean(-1)), 1.0, rtol=1e-5)
    ffn = SwiGLU(24, mlp_ratio=4.0)
    assert ffn.w12.out_features == 2 * 64 and ffn.w3.in_features == 64  # int(2/3 * 4 * 24)


@pytest.mark.parametrize("preset", ["LightningDiT-tiny"])
def test_selfcond_and_taps_work_as_on_the_plain_dit(preset):
    """Self-conditioning starts as the baseline (zero-init) and taps equal a truncated pass."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dit", preset=preset)
    base = build_denoiser(cfg, None, in_channels=4, image_size=8).eval()
    torch.manual_seed(0)
    sc = build_denoiser(cfg, SelfCondConfig(enabled=True), in_channels=4, image_size=8).eval()
    sc.load_state_dict(base.state_dict(), strict=False)
    perturb(base)
    sc.load_state_dict(base.state_dict(), strict=False)  # selfcond gate stays zero
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    with torch.no_grad():
        a = base(x, t, taps="all")
        b = sc(x, t, taps="all")
        stop = sc(x, t, taps=["block1"], stop_after="block1")
    assert torch.allclose(a.pred, b.pred, atol=1e-6)
    assert b.selfcond is not None and b.selfcond.shape == (2, 64)
    assert torch.allclose(stop.feats["block1"], b.feats["block1"], atol=1e-6)
    assert isinstance(sc.blocks[0].mlp, SwiGLU)


def test_rope_needs_head_dim_divisible_by_4():
    with pytest.raises(UserError, match="head dim"):
        build_denoiser(ModelConfig(arch="dit", preset="LightningDiT-tiny", width=36, heads=6),
                       None, in_channels=4, image_size=8)


def test_lightning_presets_parameter_counts():
    """B/2 at 32x32x4 latents: DiT-B/2 has ~130M parameters; SwiGLU at 2/3 width keeps it
    within a few percent (the extra parameters of LightningDiT are negligible)."""
    with torch.device("meta"):
        plain = build_denoiser(ModelConfig(arch="dit", preset="DiT-B/2"), None,
                               in_channels=4, image_size=32, num_classes=1000)
        light = build_denoiser(ModelConfig(arch="dit", preset="LightningDiT-B/2"), None,
                               in_channels=4, image_size=32, num_classes=1000)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_light = sum(p.numel() for p in light.parameters())
    assert 125e6 < n_plain < 135e6
    assert abs(n_light - n_plain) / n_plain < 0.02
