"""Paired statistics (eval/paired.py) against scipy references and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from ssl_diffusion.eval import fid as fidm
from ssl_diffusion.eval.paired import bootstrap_generation_difference, mcnemar, paired_difference

# ---- per-seed t-interval -------------------------------------------------------------------


def test_paired_difference_matches_scipy_t_interval() -> None:
    a, b = [71.2, 73.5, 70.9, 72.0], [72.0, 74.9, 71.1, 73.3]
    r = paired_difference(a, b)
    d = np.subtract(b, a)
    low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert r.n == 4 and r.diffs == pytest.approx(tuple(d))
    assert r.mean == pytest.approx(d.mean()) and r.std == pytest.approx(np.std(d, ddof=1))
    assert (r.ci_low, r.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert r.excludes_zero == (low > 0 or high < 0)
    # the paired t-test's p-value < 0.05 exactly when the 95% interval excludes 0
    assert r.excludes_zero == (scipy.stats.ttest_rel(b, a).pvalue < 0.05)
    assert r.to_dict()["diffs"] == pytest.approx(list(d))


def test_paired_difference_excludes_zero_both_ways_and_single_seed() -> None:
    assert paired_difference([0, 0, 0], [1.0, 1.1, 0.9]).excludes_zero
    assert paired_difference([0, 0, 0], [-1.0, -1.1, -0.9]).excludes_zero
    assert not paired_difference([0, 0, 0], [1.0, -1.0, 0.5]).excludes_zero
    one = paired_difference([1.0], [2.0])
    assert one.mean == 1.0 and math.isnan(one.ci_low) and not one.excludes_zero
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])


# ---- McNemar ---------------------------------------------------------------------------------


def _preds(b: int, c: int, both_right: int, both_wrong: int) -> tuple[np.ndarray, ...]:
    """Labels 0 and predictions with exactly b (A right, B wrong) and c (A wrong, B right)."""
    ok_a = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
    ok_b = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
    y = np.zeros(len(ok_a), dtype=int)
    return np.where(ok_a, 0, 3), np.where(ok_b, 0, 7), y


@pytest.mark.parametrize(("b", "c"), [(3, 9), (0, 5), (7, 7), (12, 2)])
def test_mcnemar_exact_matches_binomtest(b: int, c: int) -> None:
    r = mcnemar(*_preds(b, c, 50, 10))
    assert (r.b, r.c, r.method) == (b, c, "exact")
    assert r.p_value == pytest.approx(scipy.stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_chi2_matches_reference_and_accuracy_interval_brute_force() -> None:
    b, c = 40, 65
    pa, pb, y = _preds(b, c, 800, 95)
    r = mcnemar(pa, pb, y)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert r.method == "chi2" and r.statistic == pytest.approx(stat)
    assert r.p_value == pytest.approx(scipy.stats.chi2.sf(stat, 1), rel=1e-12)
    # Wald interval = normal interval of the mean per-example difference (population variance)
    d = (pb == y).astype(float) - (pa == y).astype(float)
    half = scipy.stats.norm.ppf(0.975) * d.std(ddof=0) / math.sqrt(len(d))
    assert r.acc_diff == pytest.approx(d.mean()) == pytest.approx((c - b) / len(y))
    assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    assert r.acc_b - r.acc_a == pytest.approx(r.acc_diff)
    assert r.excludes_zero == (r.ci_low > 0)


def test_mcnemar_identical_predictions() -> None:
    y = np.arange(20) % 3
    r = mcnemar(y, y, y)
    assert (r.b, r.c, r.p_value, r.acc_diff, r.excludes_zero) == (0, 0, 1.0, 0.0, False)
    with pytest.raises(ValueError, match="equal"):
        mcnemar(y, y[:5], y)


# ---- bootstrap of FID / KID differences ----------------------------------------------------


def test_frechet_resampler_matches_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    ref_f, gen = rng.normal(size=(300, 12)), rng.normal(0.3, 1.2, size=(40, 12))
    mu, cov = ref_f.mean(0), np.cov(ref_f, rowvar=False)
    res = fidm.FrechetResampler(gen, mu, cov)
    expected = fidm.frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), mu, cov)
    assert res() == pytest.approx(expected, rel=1e-9)
    rows = rng.integers(0, 40, 40)  # with repeats, as a bootstrap draws
    f = gen[rows]
    assert res(rows) == pytest.approx(
        fidm.frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, cov), rel=1e-9)
    big = rng.normal(size=(30, 12))  # n > D path (D x D Gram)
    wide = fidm.FrechetResampler(np.concatenate([gen, big]), mu, cov)
    all_f = np.concatenate([gen, big])
    assert wide() == pytest.approx(
        fidm.frechet_distance(all_f.mean(0), np.cov(all_f, rowvar=False), mu, cov), rel=1e-9)


def test_kid_resampler_matches_kernel_inception_distance() -> None:
    rng = np.random.default_rng(7)
    gen, ref = rng.normal(size=(50, 6)), rng.normal(0.2, 1.0, size=(80, 6))
    res = fidm.KIDResampler(gen, ref, subset_size=20, subsets=4, seed=9)
    assert res() == pytest.approx(fidm.kernel_inception_distance(gen, ref, 20, 4, seed=9), rel=1e-10)
    rows = rng.integers(0, 50, 50)  # with repeats
    assert res(rows) == pytest.approx(fidm.kernel_inception_distance(gen[rows], ref, 20, 4, seed=9),
                                      rel=1e-10)
    with pytest.raises(ValueError, match="50 rows"):
        res(rows[:10])


def _arms(rng: np.random.Generator, n: int, d: int = 8) -> tuple[np.ndarray, np.ndarray, fidm.ReferenceStats]:
    ref_f = rng.normal(size=(2000, d))
    ref = fidm.ReferenceStats(ref_f.mean(0), np.cov(ref_f, rowvar=False), len(ref_f), ref_f[:500])
    noise = rng.normal(size=(n, d))  # same "seeds" for both arms: paired samples
    return noise * 1.1 + 0.2, noise * 1.25 + 0.35, ref


def test_bootstrap_interval_covers_point_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = {}
    for n in (60, 600):
        fa, fb, ref = _arms(rng, n)
        r = bootstrap_generation_difference(fa, fb, ref, resamples=150, seed=3, kid_subset_size=200,
                                            kid_subsets=3)
        # point values are the project's FID / KID of all samples
        assert r.fid.value_a == pytest.approx(fidm.frechet_distance(
            fa.mean(0), np.cov(fa, rowvar=False), ref.mu, ref.sigma), rel=1e-9)
        m = min(200, n)
        assert r.kid.value_b == pytest.approx(fidm.kernel_inception_distance(fb, ref.kid_features, m, 3, 3)[0])
        for res in (r.fid, r.kid):
            assert res.ci_low <= res.point <= res.ci_high
            assert res.point == pytest.approx(res.value_b - res.value_a)
        widths[n] = r.fid.ci_high - r.fid.ci_low
        assert r.fid.excludes_zero == (r.fid.ci_low > 0 or r.fid.ci_high < 0)
    assert widths[600] < 0.6 * widths[60]  # ~ 1/sqrt(n): 0.32 expected


def test_bootstrap_resampling_is_seeded_and_paired_check() -> None:
    rng = np.random.default_rng(2)
    fa, fb, ref = _arms(rng, 50)
    r1 = bootstrap_generation_difference(fa, fb, ref, resamples=20, seed=5, kid=False)
    r2 = bootstrap_generation_difference(fa, fb, ref, resamples=20, seed=5, kid=False)
    r3 = bootstrap_generation_difference(fa, fb, ref, resamples=20, seed=6, kid=False)
    assert r1 == r2 and r1.kid is None and r1.fid.ci_low != r3.fid.ci_low
    # the percentile interval is the brute-force quantile of resampled differences
    g = np.random.default_rng(5)
    diffs = []
    for _ in range(20):
        rows = g.integers(0, 50, 50)
        a, b = fa[rows], fb[rows]
        diffs.append(fidm.frechet_distance(b.mean(0), np.cov(b, rowvar=False), ref.mu, ref.sigma)
                     - fidm.frechet_distance(a.mean(0), np.cov(a, rowvar=False), ref.mu, ref.sigma))
    assert (r1.fid.ci_low, r1.fid.ci_high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), rel=1e-8)
    r_kid = bootstrap_generation_difference(fa, fb, ref, resamples=6, seed=5, kid_subset_size=20,
                                            kid_subsets=2)
    g = np.random.default_rng(5)
    kid_diffs = []
    for _ in range(6):
        rows = g.integers(0, 50, 50)
        kid_diffs.append(fidm.kernel_inception_distance(fb[rows], ref.kid_features, 20, 2, seed=5)[0]
                         - fidm.kernel_inception_distance(fa[rows], ref.kid_features, 20, 2, seed=5)[0])
    assert (r_kid.kid.ci_low, r_kid.kid.ci_high) == pytest.approx(
        tuple(np.quantile(kid_diffs, [0.025, 0.975])), rel=1e-8)
    with pytest.raises(ValueError, match="paired=False"):
        bootstrap_generation_difference(fa, fb[:40], ref, resamples=5)
    unpaired = bootstrap_generation_difference(fa, fb[:40], ref, resamples=5, paired=False, kid=False)
    assert unpaired.n_b == 40 and not unpaired.fid.paired


def test_paired_bootstrap_is_tighter_than_unpaired_for_correlated_arms() -> None:
    # Same seeds -> strongly correlated samples: pairing removes the shared sampling noise.
    fa, fb, ref = _arms(np.random.default_rng(4), 200)
    kw = {"resamples": 100, "seed": 0, "kid": False}
    paired, unpaired = (bootstrap_generation_difference(fa, fb, ref, paired=p, **kw) for p in (True, False))
    assert paired.fid.std < unpaired.fid.std


def test_all_to_dicts_are_json_ready() -> None:
    import json

    fa, fb, ref = _arms(np.random.default_rng(5), 30)
    objs = [paired_difference([1, 2], [2, 4]), mcnemar([0, 1], [1, 1], [1, 1]),
            bootstrap_generation_difference(fa, fb, ref, resamples=4, kid_subsets=2)]
    for o in objs:
        json.dumps(o.to_dict())
    assert {"fid", "kid", "n_a", "n_b", "seed"} == set(objs[2].to_dict())
