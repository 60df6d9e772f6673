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
    """Worst-case float64 error of a ``dim``-term sum of exact products, sum|a_i b_i| <= scale."""
    return 1.05 * dim * _U64 * scale  # 1.05 >= 1 / (1 - dim * u) for any realistic dim


def _near_midpoint(s64: Tensor, delta: Tensor) -> Tensor:
    """Where the float32 rounding of the true value may differ from the rounding of ``s64``."""
    r32 = s64.float()
    inf = torch.full_like(r32, math.inf)
    lower = (
        r32.double() + torch.nextafter(r32, -inf).double()
    ) / 2  # float32 midpoints are exact in f64
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
    lo, hi = (
        (float(r), float(np.nextafter(r, up)))
        if s > float(r)
        else (float(np.nextafter(r, down)), float(r))
    )
    mid = (lo + hi) / 2
    if s != mid:
        return float(r)
    exact = sum((Fraction(p) for p in prods.tolist()), Fraction(0))
    if exact == Fraction(mid):
        return float(r)  # a true tie: numpy already rounded half to even
    return hi if exact > Fraction(mid) else lo


def _float64_dots(queries: Tensor, bank: Tensor, indices: Tensor) -> Tensor:
    """(Q, C) float64 dot products with exact products; summation order is irrelevant (bounded).

    On CPU numpy's einsum casts in small buffers and runs on one thread: measured 3-4 s per 10k
    queries x 216 candidates x 512 dims on the shared 2-core dev box, against 14-59 s for torch's
    gather + double + bmm, whose two OpenMP threads stall when the cores are oversubscribed.
    """
    if bank.device.type == "cpu":
        rows = bank.numpy()[indices.numpy()]  # (Q, C, D) float32 gather
        return torch.from_numpy(np.einsum("qcd,qd->qc", rows, queries.numpy().astype(np.float64)))
    rows = bank.index_select(0, indices.reshape(-1)).view(*indices.shape, -1).double()  # (Q, C, D)
    return torch.bmm(rows, queries.double().unsqueeze(2)).squeeze(2)


def canonical_dot(
    queries: Tensor, bank: Tensor, indices: Tensor, bank_norms: Tensor | None = None
) -> Tensor:
    """Exact ``queries[i] . bank[indices[i, j]]`` rounded to float32, identical on every path.

    Args:
        queries: (Q, D) float32.
        bank: (N, D) float32.
        indices: (Q, C) int64 rows of ``bank`` to score against each query.
        bank_norms: optional (N,) ``row_norms(bank)``, precomputed when ``bank`` is reused.

    Returns:
        (Q, C) float32 similarities.
    """
    q, c = indices.shape
    dim = queries.shape[1]
    s64 = _float64_dots(queries, bank, indices)  # (Q, C) error <= delta
    if bank_norms is None:
        b_norm = row_norms(bank.index_select(0, indices.reshape(-1))).view(q, c)  # (Q, C)
    else:
        b_norm = bank_norms.index_select(0, indices.reshape(-1)).view(q, c)  # (Q, C)
    risky = _near_midpoint(s64, _summation_bound(dim, row_norms(queries)[:, None] * b_norm))
    out = s64.float()
    if bool(risky.any()):
        qi, cj = risky.nonzero(as_tuple=True)
        # Tighter bound from sum|a_i b_i| first: it clears e.g. exact zeros of orthogonal rows.
        abs_dot = (bank[indices[qi, cj]].double().abs() * queries[qi].double().abs()).sum(
            dim=1
        )  # (R,)
        still = _near_midpoint(s64[qi, cj], _summation_bound(dim, abs_dot))
        qi, cj = qi[still], cj[still]
        q_np = queries[qi].cpu().numpy()
        b_np = bank[indices[qi, cj]].cpu().numpy()
        fixed = [_round_exact(a, b) for a, b in zip(q_np, b_np)]
        out[qi, cj] = torch.tensor(fixed, dtype=torch.float32, device=out.device)
    return out


def row_norms(x: Tensor) -> Tensor:
    """(N,) float64 upper bounds of the row norms of float32 ``x`` (for error bounds only).

    The float32 norm is off by at most ~D * 2^-24 relative; inflating by twice that keeps it an
    upper bound without a float64 copy of the rows.
    """
    return torch.linalg.vector_norm(x, dim=1).double() * (1 + 2 * x.shape[1] * 2.0**-24)
