"""Canonical inner products: the exact dot product of float32 vectors, correctly rounded to float32.

Different BLAS kernels (torch matmul, faiss sgemm, blocked or not) sum the D products in different
orders, so the same similarity can differ in its last bits between backends and chunkings, and
near-ties then rank differently. Re-scoring every candidate with this routine gives one value per
(query, bank row) pair that does not depend on how it was computed:

1. Products of two float32 numbers are exact in float64 (24 + 24 significand bits <= 53), so a
   float64 dot product has only summation error, at most ``delta = 1.05 * D * 2^-53 * |q| |b|``
   (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 3.5, any summation order).
2. Rounding that float64 value to float32 gives the correctly rounded exact value unless it lies
   within ``delta`` of a float32 rounding midpoint. Those rare pairs (~1e-5 of them for unit
   vectors) are recomputed exactly with ``math.fsum`` (and ``fractions`` when fsum itself lands on
   the midpoint).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

_U64 = 2.0**-53  # unit roundoff of float64


def _summation_bound(dim: int, scale: Tensor) -> Tensor:
    """Worst-case float64 summation error of a length-``dim`` dot product with sum|a_i b_i| <= scale."""
    return 1.05 * dim * _U64 * scale  # 1.05 >= 1 / (1 - dim * u) for any realistic dim


def _near_midpoint(s64: Tensor, delta: Tensor) -> Tensor:
    """Where the float32 rounding of the true value may differ from the rounding of ``s64``."""
    r32 = s64.float()
    inf = torch.full_like(r32, math.inf)
    lower = (r32.double() + torch.nextafter(r32, -inf).double()) / 2  # float32 midpoints are exact in f64
    upper = (r32.double() + torch.nextafter(r32, inf).double()) / 2
    return ((s64 - lower).abs() <= delta) | ((s64 - upper).abs() <= delta)


def _round_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Correctly rounded float32 value of sum(a * b) for float32 vectors a and b."""
    prods = a.astype(np.float64) * b.astype(np.float64)  # (D,) exact products
    s = math.fsum(prods.tolist())  # correctly rounded float64 of the exact sum
    r = np.float32(s)
    if float(r) == s:
        return float(r)
    # f64 -> f32 double rounding can only go wrong when s is exactly a float32 midpoint.
    # (Compare as Python floats: numpy would cast s down to float32 against an np.float32.)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    lo, hi = (float(r), float(np.nextafter(r, up))) if s > float(r) else (float(np.nextafter(r, down)), float(r))
    mid = (lo + hi) / 2
    if s != mid:
        return float(r)
    exact = sum((Fraction(p) for p in prods.tolist()), Fraction(0))
    if exact == Fraction(mid):
        return float(r)  # a true tie: numpy already rounded half to even
    return hi if exact > Fraction(mid) else lo


def canonical_dot(queries: Tensor, bank: Tensor, indices: Tensor) -> Tensor:
    """Exact ``queries[i] . bank[indices[i, j]]`` rounded to float32, identical on every path.

    Args:
        queries: (Q, D) float32.
        bank: (N, D) float32.
        indices: (Q, C) int64 rows of ``bank`` to score against each query.

    Returns:
        (Q, C) float32 similarities.
    """
    q, c = indices.shape
    dim = queries.shape[1]
    rows = bank.index_select(0, indices.reshape(-1)).view(q, c, dim).double()  # (Q, C, D)
    q64 = queries.double()  # (Q, D)
    s64 = torch.bmm(rows, q64.unsqueeze(2)).squeeze(2)  # (Q, C) error <= delta
    scale = q64.norm(dim=1, keepdim=True) * rows.norm(dim=2)  # (Q, C) Cauchy-Schwarz >= sum|a_i b_i|
    risky = _near_midpoint(s64, _summation_bound(dim, scale))
    out = s64.float()
    if bool(risky.any()):
        qi, cj = risky.nonzero(as_tuple=True)
        # Tighter bound from sum|a_i b_i| first: it clears e.g. exact zeros of orthogonal rows.
        abs_dot = (rows[qi, cj].abs() * q64[qi].abs()).sum(dim=1)  # (R,)
        still = _near_midpoint(s64[qi, cj], _summation_bound(dim, abs_dot))
        qi, cj = qi[still], cj[still]
        q_np = queries[qi].cpu().numpy()
        b_np = bank[indices[qi, cj]].cpu().numpy()
        fixed = [_round_exact(a, b) for a, b in zip(q_np, b_np)]
        out[qi, cj] = torch.tensor(fixed, dtype=torch.float32, device=out.device)
    return out
