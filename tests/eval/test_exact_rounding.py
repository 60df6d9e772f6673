"""The float32 re-rounding test behind canonical_dot: a value within delta of a float32 rounding
midpoint is always flagged (recomputed exactly); values far from midpoints are not."""

from __future__ import annotations

import math

import torch

from ssl_diffusion.eval.exact_dot import _may_round_differently


def test_values_near_a_midpoint_are_always_flagged():
    r = torch.tensor([1.0, 0.75, 3.0e-3, -0.4, 2.0**-20], dtype=torch.float32)
    mid = (r.double() + torch.nextafter(r, torch.full_like(r, math.inf)).double()) / 2  # exact
    delta = mid.abs() * 2.0**-40  # (5,)
    for frac in (-1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0):
        s = mid + frac * delta
        assert _may_round_differently(s, delta).all(), frac


def test_values_far_from_midpoints_are_not_flagged():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1000, generator=g)  # float32 values
    s = r.double()  # exactly representable: half an ulp away from both midpoints
    assert not _may_round_differently(s, s.abs() * 2.0**-40).any()
    assert not _may_round_differently(torch.zeros(3, dtype=torch.float64),
                                      torch.zeros(3, dtype=torch.float64)).any()
