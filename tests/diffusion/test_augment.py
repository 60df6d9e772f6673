"""EDM-style geometric augmentation: identity at zero probability, exact flips, label layout,
determinism, and warps checked against exact pixel permutations."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_diffusion.diffusion import AUG_DIM, AugmentConfig, AugmentPipe
from ssl_diffusion.errors import UserError

OFF = {"xflip": 0.0, "yflip": 0.0, "scale": 0.0, "rotate": 0.0, "aniso": 0.0, "translate": 0.0}


def images(n=16, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_zero_probability_is_identity_with_zero_labels():
    x = images()
    out = AugmentPipe(AugmentConfig(p=0.0))(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.images, x)
    assert out.labels.shape == (16, AUG_DIM) and not out.labels.any()


@pytest.mark.parametrize("axis,column,dim", [("xflip", 0, -1), ("yflip", 1, -2)])
def test_flip_with_p1_equals_torch_flip(axis, column, dim):
    x = images(64)
    cfg = AugmentConfig(p=1.0, **{**OFF, axis: 1.0})
    img, labels = AugmentPipe(cfg)(x, generator=torch.Generator().manual_seed(2))
    flipped = labels[:, column] == 1
    assert 16 < int(flipped.sum()) < 48  # EDM flips are randomised: about half flipped
    assert torch.equal(img[flipped], torch.flip(x[flipped], dims=[dim]))
    assert torch.equal(img[~flipped], x[~flipped])
    others = torch.cat([labels[:, :column], labels[:, column + 1 :]], dim=1)
    assert not others.any()


def test_labels_layout_and_determinism():
    x = images(32)
    pipe = AugmentPipe(AugmentConfig(p=0.5))
    a = pipe(x, generator=torch.Generator().manual_seed(3))
    b = pipe(x, generator=torch.Generator().manual_seed(3))
    c = pipe(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    lab = a.labels
    assert set(lab[:, 0].unique().tolist()) <= {0.0, 1.0} and set(lab[:, 1].unique().tolist()) <= {
        0.0,
        1.0,
    }
    # rotation label (cos - 1, sin) lies on the shifted unit circle
    torch.testing.assert_close((lab[:, 3] + 1) ** 2 + lab[:, 4] ** 2, torch.ones(32))
    # samples whose geometric labels are all zero are untouched apart from flips
    plain = ~lab[:, 2:].any(1)
    assert plain.any()
    for i in plain.nonzero().flatten().tolist():
        ref = x[i].flip(-1) if lab[i, 0] else x[i]
        ref = ref.flip(-2) if lab[i, 1] else ref
        assert torch.equal(a.images[i], ref)


def _params(n=2, **kw):
    base = {k: torch.zeros(n) for k in ("xflip", "yflip", "log_scale", "theta", "log_aniso", "phi")}
    base["shift"] = torch.zeros(n, 2)
    base.update(
        {
            k: torch.as_tensor(v, dtype=torch.float32).expand_as(base[k]).clone()
            for k, v in kw.items()
        }
    )
    return base


def test_warps_match_exact_pixel_maps():
    x = images(2, size=6)
    # 180-degree rotation is a flip of both axes
    rot = AugmentPipe._warp(x, _params(theta=math.pi))
    torch.testing.assert_close(rot, x.flip(-1).flip(-2), atol=1e-5, rtol=0)
    # 90-degree rotation on a square image is a transpose + flip (direction-agnostic check)
    r90 = AugmentPipe._warp(x, _params(theta=math.pi / 2))
    cands = [x.transpose(-1, -2).flip(-1), x.transpose(-1, -2).flip(-2)]
    assert min(float((r90 - c).abs().max()) for c in cands) < 1e-5
    # a translation of one pixel (1/6 of the size) shifts the content by one column
    moved = AugmentPipe._warp(x, _params(shift=[1 / 6, 0.0]))
    torch.testing.assert_close(moved[..., 1:], x[..., :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[..., 0], x[..., 0], atol=1e-5, rtol=0)  # reflection padding
    # anisotropic scaling by 2^0 and zero parameters are the identity
    torch.testing.assert_close(AugmentPipe._warp(x, _params(phi=0.7)), x, atol=1e-5, rtol=0)


def test_labels_encode_parameters():
    p = _params(1, xflip=1.0, log_scale=0.3, theta=0.5, log_aniso=-0.2, phi=1.0, shift=[0.1, -0.05])
    lab = AugmentPipe.labels(p)[0]
    expected = torch.tensor(
        [
            1.0,
            0.0,
            0.3,
            math.cos(0.5) - 1,
            math.sin(0.5),
            -0.2 * math.cos(1.0),
            -0.2 * math.sin(1.0),
            0.1,
            -0.05,
        ]
    )
    torch.testing.assert_close(lab, expected)


def test_negative_probability_is_a_user_error():
    with pytest.raises(UserError, match="augment.p=-0.1"):
        AugmentPipe(AugmentConfig(p=-0.1))
