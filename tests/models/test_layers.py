"""Building blocks against independent numpy / naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_diffusion.models.layers import (
    Attention,
    sincos_pos_embed_2d,
    timestep_embedding,
    unpatchify,
)
from ssl_diffusion.models.unet import AttnBlock


def test_timestep_embedding_matches_the_formula():
    t = torch.tensor([0.0, 0.0005, 0.017, 0.999])  # O(1) labels, scaled by 1000 inside
    dim = 10
    got = timestep_embedding(t, dim).numpy()
    freqs = np.array([10000 ** (-i / 5) for i in range(5)])
    scaled = t.double().numpy()[:, None] * 1000.0
    ref = np.concatenate([np.cos(scaled * freqs), np.sin(scaled * freqs)], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    raw = timestep_embedding(t * 1000, dim, scale=1.0).numpy()
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-4)
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_2d_sincos_matches_a_loop_reference():
    dim, grid = 8, 3
    got = sincos_pos_embed_2d(dim, grid).numpy()
    ref = np.zeros((grid * grid, dim))
    for r in range(grid):
        for c in range(grid):
            for i in range(dim // 4):
                w = 1.0 / 10000 ** (i / (dim / 4))
                # first half: column (w) coordinate, second half: row (h) coordinate [MAE]
                ref[r * grid + c, i] = math.sin(c * w)
                ref[r * grid + c, dim // 4 + i] = math.cos(c * w)
                ref[r * grid + c, dim // 2 + i] = math.sin(r * w)
                ref[r * grid + c, 3 * dim // 4 + i] = math.cos(r * w)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_unpatchify_inverts_the_patch_order():
    n, c, p, grid = 2, 3, 2, 4
    x = torch.randn(n, c, p * grid, p * grid)
    tokens = torch.zeros(n, grid * grid, p * p * c)
    for r in range(grid):
        for col in range(grid):
            patch = x[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p]  # (N, C, p, p)
            tokens[:, r * grid + col] = patch.permute(0, 2, 3, 1).reshape(n, -1)  # (p, q, C)
    assert torch.equal(unpatchify(tokens, c, p, grid), x)


def _naive_attention(x, qkv, proj, heads):
    _n, _t, d = x.shape
    q, k, v = qkv(x).split(d, dim=-1)
    outs = []
    for h in range(heads):
        sl = slice(h * d // heads, (h + 1) * d // heads)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d // heads), -1)
        outs.append(w @ v[..., sl])
    return proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_naive_softmax_attention(heads):
    torch.manual_seed(0)
    attn = Attention(32, heads)
    x = torch.randn(2, 7, 32)
    ref = _naive_attention(x, attn.qkv, attn.proj, heads)
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


def test_unet_attention_block_matches_naive_attention():
    torch.manual_seed(0)
    blk = AttnBlock(32, heads=2)
    x = torch.randn(2, 32, 4, 4)
    t = blk.norm(x).flatten(2).transpose(1, 2)
    ref = x + _naive_attention(t, blk.qkv, blk.proj, 2).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(blk(x), ref, rtol=1e-5, atol=1e-5)
