"""Paired statistics for comparing two arms (e.g. ``ddae`` vs ``ddaepp``) run with the same seeds.

Paired design (docs: issue 12): for one seed both arms start from the same base weights and see
the same data and noise, so the evidence is the per-seed difference B - A, not two separate
means. With two or three seeds a t-interval is wide, so each seed is also tested at the example
level:

* ``paired_difference``: per-seed differences B - A of a metric -> mean, sample standard deviation
  (ddof=1), n and the two-sided Student-t interval mean +- t_{1-a/2, n-1} sd / sqrt(n).
* ``mcnemar``: McNemar's test on two arms' predictions for the same test examples (McNemar 1947).
  b = examples A gets right and B wrong, c = the reverse. Exact two-sided binomial test on the
  discordant pairs (b ~ Bin(b + c, 1/2) under H0) when b + c < ``exact_below`` (25, the usual
  rule), else the continuity-corrected chi-square (|b - c| - 1)^2 / (b + c) with 1 dof. The
  accuracy difference acc_B - acc_A = (c - b) / n gets the Wald interval of a paired difference
  of proportions, sd = sqrt(((b + c)/n - ((c - b)/n)^2) / n) (Agresti, Categorical Data Analysis
  §10.1).
* ``bootstrap_generation_difference``: percentile bootstrap interval for FID_B - FID_A and
  KID_B - KID_A. Generated samples are resampled with replacement from a seeded generator; with
  ``paired=True`` (default; same per-image sampler seeds in both arms) one index draw serves both
  arms. The reference statistics stay fixed (they are shared by both arms). FID/KID math is the
  project's (``eval/fid.py``: ``FrechetResampler``, ``KIDResampler``, which equal
  ``frechet_distance`` / ``kernel_inception_distance`` of the resampled rows). Caveat: a
  resample repeats images, and both FID and the unbiased KID estimator read a repeated pair as
  two samples, which biases each arm's resampled value upward by O(1/n); the difference largely
  cancels it, but the interval is approximate at small n.

Every result is a frozen dataclass with ``to_dict()`` (JSON-ready floats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import scipy.stats

from ssl_diffusion.eval.fid import FrechetResampler, KIDResampler, ReferenceStats, psd_sqrt

__all__ = [
    "BootstrapDifference",
    "GenerationBootstrap",
    "McNemarResult",
    "PairedDifference",
    "bootstrap_generation_difference",
    "mcnemar",
    "paired_difference",
]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _excludes_zero(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences B - A of one metric and their Student-t interval."""

    diffs: tuple[float, ...]  # B - A, one per seed, in the order given
    n: int  # number of seeds (pairs)
    mean: float  # mean difference
    std: float  # sample standard deviation (ddof=1); nan for n = 1
    ci_low: float  # two-sided t-interval; nan for n = 1 (no spread to estimate)
    ci_high: float
    confidence: float  # e.g. 0.95
    excludes_zero: bool  # the interval lies entirely above or below 0

    def to_dict(self) -> dict:
        return {**asdict(self), "diffs": list(self.diffs)}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Per-seed differences ``b[i] - a[i]`` -> mean, sd, n and the t-interval of the mean."""
    _check_confidence(confidence)
    xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if xa.ndim != 1 or xa.shape != xb.shape or len(xa) == 0:
        raise ValueError(f"need two equal-length 1-d sequences of per-seed values, got shapes "
                         f"{xa.shape} and {xb.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("per-seed values must be finite")
    d = xb - xa  # (n,)
    n, mean = len(d), float(d.mean())
    if n < 2:
        std = low = high = math.nan
    else:
        std = float(d.std(ddof=1))
        half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedDifference(tuple(float(v) for v in d), n, mean, std, low, high, confidence,
                            _excludes_zero(low, high))


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two arms' per-example correctness, plus the accuracy difference B - A."""

    n: int  # test examples
    b: int  # A correct, B wrong
    c: int  # A wrong, B correct
    method: Literal["exact", "chi2"]  # exact binomial (b + c small) or chi-square with correction
    statistic: float  # exact: min(b, c); chi2: (|b - c| - 1)^2 / (b + c)
    p_value: float  # two-sided
    acc_a: float
    acc_b: float
    acc_diff: float  # acc_b - acc_a = (c - b) / n
    ci_low: float  # Wald interval of acc_diff
    ci_high: float
    confidence: float
    excludes_zero: bool  # the accuracy-difference interval excludes 0

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(pred_a: Sequence[int] | np.ndarray, pred_b: Sequence[int] | np.ndarray,
            labels: Sequence[int] | np.ndarray, confidence: float = 0.95,
            exact_below: int = 25) -> McNemarResult:
    """McNemar's test on predictions of arms A and B for the same ``labels`` (one per example)."""
    _check_confidence(confidence)
    pa, pb, y = (np.asarray(v).reshape(-1) for v in (pred_a, pred_b, labels))
    if not (len(pa) == len(pb) == len(y)) or len(y) == 0:
        raise ValueError(f"predictions and labels must have one equal, non-zero length, got "
                         f"{len(pa)}, {len(pb)} and {len(y)}")
    ok_a, ok_b = pa == y, pb == y  # (n,) per-example correctness
    n = len(y)
    b, c = int((ok_a & ~ok_b).sum()), int((~ok_a & ok_b).sum())
    discordant = b + c
    if discordant == 0:
        method, statistic, p = "exact", 0.0, 1.0
    elif discordant < exact_below:
        method, statistic = "exact", float(min(b, c))
        p = min(1.0, 2.0 * float(scipy.stats.binom.cdf(min(b, c), discordant, 0.5)))
    else:
        method = "chi2"
        statistic = (abs(b - c) - 1.0) ** 2 / discordant
        p = float(scipy.stats.chi2.sf(statistic, df=1))
    diff = (c - b) / n
    sd = math.sqrt(max(discordant / n - diff**2, 0.0) / n)
    half = float(scipy.stats.norm.ppf(0.5 + confidence / 2)) * sd
    return McNemarResult(n, b, c, method, statistic, p, float(ok_a.mean()), float(ok_b.mean()),
                         diff, diff - half, diff + half, confidence,
                         _excludes_zero(diff - half, diff + half))


@dataclass(frozen=True)
class BootstrapDifference:
    """Percentile bootstrap interval of one generation metric's difference B - A."""

    metric: str  # "fid" | "kid"
    value_a: float  # metric of all of A's samples
    value_b: float
    point: float  # value_b - value_a
    std: float  # standard deviation of the resampled differences
    ci_low: float  # percentile interval
    ci_high: float
    resamples: int
    confidence: float
    paired: bool  # one index draw for both arms
    excludes_zero: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationBootstrap:
    """Bootstrap intervals of the FID and KID differences (``kid`` None when not computed)."""

    fid: BootstrapDifference
    kid: BootstrapDifference | None
    n_a: int  # generated samples of each arm
    n_b: int
    seed: int

    def to_dict(self) -> dict:
        return {"fid": self.fid.to_dict(), "kid": None if self.kid is None else self.kid.to_dict(),
                "n_a": self.n_a, "n_b": self.n_b, "seed": self.seed}


def _interval(metric: str, a: float, b: float, diffs: np.ndarray, confidence: float,
              paired: bool) -> BootstrapDifference:
    alpha = 1.0 - confidence
    low, high = (float(q) for q in np.quantile(diffs, [alpha / 2, 1 - alpha / 2]))
    return BootstrapDifference(metric, a, b, b - a, float(diffs.std(ddof=1)), low, high, len(diffs),
                               confidence, paired, _excludes_zero(low, high))


def bootstrap_generation_difference(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    ref: ReferenceStats,
    *,
    resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    paired: bool = True,
    kid: bool = True,
    kid_subset_size: int = 1000,
    kid_subsets: int = 10,
) -> GenerationBootstrap:
    """Bootstrap FID_B - FID_A and KID_B - KID_A over generated samples.

    ``feats_a``/``feats_b``: (N, D) Inception pool3 features of each arm's generated images, in
    per-image seed order when ``paired``; ``ref``: the reference statistics (mu, sigma for FID,
    kid_features for KID). KID uses ``kid_subsets`` subsets of ``kid_subset_size`` rows with the
    same subset seed in every resample and both arms. Cost: one (N, N) Gram eigendecomposition
    (n <= 2048) per arm and resample for FID; the KID kernels are computed once per arm
    (8 (N^2 + N R) bytes), so a resample's KID is index lookups. Measured (1 thread, loaded
    2-core CPU, random 2048-d features, N = 500 per arm, 2,000 reference rows, 100 KID subsets
    of 500): ~30 s setup, then ~1.5 s per resample.
    """
    _check_confidence(confidence)
    fa, fb = np.asarray(feats_a), np.asarray(feats_b)
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    if paired and len(fa) != len(fb):
        raise ValueError(f"paired bootstrap needs the same number of samples per arm (same seeds), "
                         f"got {len(fa)} and {len(fb)}; pass paired=False")
    sqrt_ref = psd_sqrt(np.asarray(ref.sigma, np.float64))  # shared by both arms
    fid_a, fid_b = (FrechetResampler(f, ref.mu, ref.sigma, sqrt_ref) for f in (fa, fb))
    if kid:
        ref_kid = np.asarray(ref.kid_features)
        m = min(kid_subset_size, len(fa), len(fb), len(ref_kid))  # one subset size for both arms
        kid_a, kid_b = (KIDResampler(f, ref_kid, m, kid_subsets, seed) for f in (fa, fb))
    rng = np.random.default_rng(seed)
    d_fid, d_kid = np.empty(resamples), np.empty(resamples)
    for r in range(resamples):
        rows_a = rng.integers(0, len(fa), len(fa))  # with replacement
        rows_b = rows_a if paired else rng.integers(0, len(fb), len(fb))
        d_fid[r] = fid_b(rows_b) - fid_a(rows_a)
        if kid:
            d_kid[r] = kid_b(rows_b)[0] - kid_a(rows_a)[0]
    fid_res = _interval("fid", fid_a(), fid_b(), d_fid, confidence, paired)
    kid_res = _interval("kid", kid_a()[0], kid_b()[0], d_kid, confidence, paired) if kid else None
    return GenerationBootstrap(fid_res, kid_res, len(fa), len(fb), seed)
