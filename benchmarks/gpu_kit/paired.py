"""Paired differences between two arms run with the same seeds (arm B - arm A, seed by seed).

For one seed both arms start from the same base weights and see the same data order and noise, so
the per-seed difference removes the seed's share of the variance. Reported: the differences, their
mean, sample standard deviation and the two-sided 95% Student-t interval of the mean,
``mean ± t(0.975, n-1) · std / sqrt(n)`` (no std or interval with one pair).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


@dataclass
class PairedDifference:
    metric: str
    seeds: list[int]  # seeds present in both arms, ascending
    diffs: list[float]  # B - A per seed
    mean: float | None
    std: float | None  # sample standard deviation (ddof 1); None with < 2 pairs
    ci95: tuple[float, float] | None  # t-interval of the mean; None with < 2 pairs

    @property
    def n(self) -> int:
        return len(self.diffs)

    def as_dict(self) -> dict:
        return {**asdict(self), "n": self.n}


def paired_difference(metric: str, a: dict[int, float], b: dict[int, float]) -> PairedDifference:
    """Differences ``b[seed] - a[seed]`` over the seeds both arms have."""
    from scipy.stats import t

    seeds = sorted(set(a) & set(b))
    diffs = [float(b[s]) - float(a[s]) for s in seeds]
    if not diffs:
        return PairedDifference(metric, [], [], None, None, None)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(metric, seeds, diffs, mean, None, None)
    std = statistics.stdev(diffs)
    half = float(t.ppf(0.975, len(diffs) - 1)) * std / math.sqrt(len(diffs))
    return PairedDifference(metric, seeds, diffs, mean, std, (mean - half, mean + half))


__all__ = ["PairedDifference", "paired_difference"]
