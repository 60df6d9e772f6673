"""Generation metrics: FID, KID and Inception Score from streaming Inception statistics.

* ``FeatureStats`` accumulates n, sum and sum of outer products in float64 (edm2-style), so
  statistics never need all features in memory and are exactly mergeable across processes
  (``all_reduce_()``, or all-reduce ``raw_sums()`` yourself).
* ``frechet_distance`` (Heusel et al. 2017) takes tr sqrt(C1 C2) from symmetric eigen-
  decompositions: sqrt(C1) C2 sqrt(C1) is PSD and has the eigenvalues of C1 C2, so no complex
  ``sqrtm`` and no eps-offset retries are needed; rank-deficient (small-n) covariances work.
  ``frechet_distance_from_features`` gives the same value from raw features in O(n^3) for n < D:
  ``compute_fid`` uses it automatically in the small-data CPU regime (a few hundred to 2k images).
* ``FrechetResampler`` / ``KIDResampler``: FID / KID of many row resamples of one feature set
  against a fixed reference (bootstrap intervals, ``paired.py``), with the expensive parts
  (sqrt of the reference covariance, projections, kernel matrices) computed once.
* KID (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, averaged over subsets.
* IS (Salimans et al. 2016): only when the network has classifier logits (torch-fidelity weights).
* Reference statistics of a dataset split are cached as .npz keyed by (dataset, split, resolution,
  feature network, resize, n) and written atomically.

Images enter as uint8 (N, C, H, W) batches; see ``inception.py`` for the resize convention.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.eval.inception import RESIZE_ID, InceptionFeatureNet, load_inception

STANDARD_N = 50_000  # FID-50k: the number published FIDs are computed with
ImageBatches = Iterable[torch.Tensor | np.ndarray]  # uint8 (N, C, H, W) batches


def _sample_priority(index: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 hash of global sample indices: a fixed pseudo-random key per sample.

    Keeping the k smallest keys is a uniform random subset that does not depend on batch
    composition, process count or data order, and merges exactly (union, keep k smallest).
    """
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FeatureStats:
    """Streaming mean / covariance of (N, D) features in float64, plus a KID sample of rows.

    ``update(feats, index)``: ``index`` are global sample ids (default: a running counter); they
    only decide which rows are kept for KID (``keep`` rows at most, a uniform random subset).
    """

    def __init__(self, dim: int, keep: int = 0, device: str | torch.device = "cpu", seed: int = 0):
        self.dim, self.keep, self.seed = dim, keep, seed
        self.n = torch.zeros((), dtype=torch.float64, device=device)  # float64: all-reducible
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.kept_features = np.zeros((0, dim), dtype=np.float32)  # (K, D), K <= keep
        self.kept_priority = np.zeros(0, dtype=np.uint64)  # (K,)
        self._next_index = 0

    def update(self, feats: torch.Tensor, index: torch.Tensor | np.ndarray | None = None) -> None:
        x = feats.detach().to(self.sum.device, torch.float64)  # (N, D)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {tuple(x.shape)}")
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x  # (D, D)
        if index is None:
            index = np.arange(self._next_index, self._next_index + x.shape[0])
        self._next_index += x.shape[0]
        if self.keep > 0:
            prio = _sample_priority(np.asarray(torch.as_tensor(index).cpu()), self.seed)
            self.add_kept(feats.detach().float().cpu().numpy(), prio)

    def add_kept(self, feats: np.ndarray, prio: np.ndarray) -> None:
        """Offer rows with their priorities to the KID sample (keeps the ``keep`` smallest)."""
        all_feats = np.concatenate([self.kept_features, feats])
        all_prio = np.concatenate([self.kept_priority, prio])
        order = np.argsort(all_prio, kind="stable")[: self.keep]
        self.kept_features, self.kept_priority = all_feats[order], all_prio[order]

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's statistics (disjoint samples) in place; returns self."""
        self.n += other.n.to(self.n.device)
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum_outer.device)
        if self.keep > 0:
            self.add_kept(other.kept_features, other.kept_priority)
        return self

    def raw_sums(self) -> dict[str, torch.Tensor]:
        """The float64 tensors a DDP caller all-reduces (SUM) in place: n, sum, sum_outer."""
        return {"n": self.n, "sum": self.sum, "sum_outer": self.sum_outer}

    def all_reduce_(self, group: object | None = None) -> FeatureStats:
        """Combine the shards of all processes in place (no-op without torch.distributed).

        Sums are all-reduced on their device (put the stats on the GPU for NCCL); the KID rows
        travel by ``all_gather_object``. Shards must hold disjoint global sample indices.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        for t in self.raw_sums().values():
            dist.all_reduce(t, group=group)
        if self.keep > 0:
            shards: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(shards, (self.kept_features, self.kept_priority), group=group)
            self.kept_features = np.zeros((0, self.dim), dtype=np.float32)
            self.kept_priority = np.zeros(0, dtype=np.uint64)
            for feats, prio in shards:
                self.add_kept(feats, prio)
        return self

    @property
    def count(self) -> int:
        return int(self.n.item())

    def mean(self) -> np.ndarray:
        return (self.sum / self.n).cpu().numpy()  # (D,)

    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1, like np.cov): (sum_outer - n mu mu^T) / (n - 1)."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.count}")
        mu = self.sum / self.n
        cov = (self.sum_outer - self.n * torch.outer(mu, mu)) / (self.n - 1)  # (D, D)
        return cov.cpu().numpy()


class LogitStats:
    """Streaming Inception Score: per split, count, sum of p(y|x) and sum of sum_y p log p.

    IS_s = exp(E_x KL(p(y|x) || p_s(y))) = exp(mean_x sum_y p log p - sum_y p_s log p_s) is exact
    from these sums. Sample i goes to split ``i % splits`` (torch-fidelity shuffles, then chunks;
    both are uniform random splits).
    """

    def __init__(self, splits: int = 10):
        self.splits = splits
        self.count = torch.zeros(splits, dtype=torch.float64)
        self.sum_p: torch.Tensor | None = None  # (S, K), allocated on the first update
        self.sum_plogp = torch.zeros(splits, dtype=torch.float64)
        self._next_index = 0

    def update(self, logits: torch.Tensor, index: torch.Tensor | np.ndarray | None = None) -> None:
        logp = torch.log_softmax(logits.detach().cpu().double(), dim=1)  # (N, K)
        p = logp.exp()
        if index is None:
            index = np.arange(self._next_index, self._next_index + logits.shape[0])
        self._next_index += logits.shape[0]
        split = torch.as_tensor(np.asarray(index) % self.splits, dtype=torch.long)  # (N,)
        if self.sum_p is None:
            self.sum_p = torch.zeros(self.splits, p.shape[1], dtype=torch.float64)
        self.count.index_add_(0, split, torch.ones(len(split), dtype=torch.float64))
        self.sum_p.index_add_(0, split, p)
        self.sum_plogp.index_add_(0, split, (p * logp).sum(1))

    def all_reduce_(self, group: object | None = None) -> LogitStats:
        """Sum the per-split accumulators over processes (small: gathered as objects)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        shards: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(shards, (self.count, self.sum_p, self.sum_plogp), group=group)
        self.count = sum(c for c, _, _ in shards)
        sum_ps = [p for _, p, _ in shards if p is not None]
        self.sum_p = sum(sum_ps) if sum_ps else None
        self.sum_plogp = sum(q for _, _, q in shards)
        return self

    def score(self) -> tuple[float, float]:
        """(mean, std) of the per-split Inception Scores."""
        if self.sum_p is None:
            raise ValueError("Inception Score of zero images")
        c = self.count.clamp_min(1)
        p_split = self.sum_p / c[:, None]  # (S, K)
        marg = (p_split * torch.log(p_split.clamp_min(1e-300))).sum(1)  # (S,)
        scores = torch.exp(self.sum_plogp / c - marg)[self.count > 0].numpy()
        return float(scores.mean()), float(scores.std())


def _psd_eigvals_clean(ev: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0.

    Below the numerical-rank tolerance (len * eps * max, as ``np.linalg.matrix_rank``) values are
    noise; keeping them would add sqrt(noise) ~ 1e-8 per null direction, which for small-n
    covariances (rank n - 1 << 2048) shifts FID by ~1e-4 relative. Clearly negative values mean
    the input was not PSD.
    """
    top = max(float(ev.max(initial=0.0)), 1e-300)
    if ev.size and ev.min() < -1e-6 * top:
        raise ValueError(f"covariances are not positive semi-definite (eigenvalue {ev.min():.3g})")
    return np.where(ev > len(ev) * np.finfo(np.float64).eps * top, ev, 0.0)


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root of a covariance via eigh (rounding-noise eigenvalues set to 0)."""
    w, v = scipy.linalg.eigh(cov, driver="evd")  # evd: the fastest LAPACK driver at D=2048
    return (v * np.sqrt(_psd_eigvals_clean(w))) @ v.T  # (D, D)


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrt(cov1 cov2) for PSD matrices via symmetric eigh (stable when rank-deficient)."""
    sqrt1 = psd_sqrt(cov1)
    m = sqrt1 @ cov2 @ sqrt1  # same eigenvalues as cov1 @ cov2
    ev = scipy.linalg.eigh((m + m.T) / 2, eigvals_only=True, driver="evd")
    return float(np.sqrt(_psd_eigvals_clean(ev)).sum())


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Exact FID from all features (ddof=1 covariances), for the small-n regime n < D.

    With centred features A_i, C_i = A_i^T A_i / (n_i - 1) and the non-zero eigenvalues of C1 C2
    are those of M M^T / ((n1-1)(n2-1)), M = A1 A2^T (n1 x n2). Cost O(n1 n2 D + min(n)^3)
    instead of two D x D eigen-decompositions: a 500-image CPU FID takes well under a second.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    n1, n2 = len(f1), len(f2)
    if min(n1, n2) < 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need >= 2 samples of equal dimension, got {f1.shape} and {f2.shape}")
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)  # (n1, D), (n2, D)
    m = a1 @ a2.T  # (n1, n2)
    gram = m @ m.T if n1 <= n2 else m.T @ m  # (min n, min n), PSD
    ev = _psd_eigvals_clean(np.linalg.eigvalsh(gram)) / ((n1 - 1) * (n2 - 1))
    tr_sqrt = np.sqrt(ev).sum()
    diff = f1.mean(0) - f2.mean(0)
    tr1, tr2 = (a1**2).sum() / (n1 - 1), (a2**2).sum() / (n2 - 1)
    return float(max(diff @ diff + tr1 + tr2 - 2 * tr_sqrt, 0.0))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 sqrt(C1 C2)) between two Gaussians (FID, eq. 6)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}")
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
    return float(max(fid, 0.0))  # tiny negative values are rounding of an exact 0


class FrechetResampler:
    """FID of row resamples of one generated feature set against fixed reference statistics.

    For bootstrap intervals (``eval/paired.py``): sqrt(C_ref) = S is taken once, the features are
    projected once (Y = F S), and a resample's tr sqrt(C_gen C_ref) = tr sqrt(S C_gen S) comes
    from the eigenvalues of the centred projected rows' Gram matrix (n x n, or D x D when n > D),
    the same identity ``frechet_distance_from_features`` uses; no D x D eigh per resample.
    ``sqrt_ref`` lets several resamplers share one ``psd_sqrt(ref_cov)``.
    """

    def __init__(self, feats: np.ndarray, ref_mu: np.ndarray, ref_cov: np.ndarray,
                 sqrt_ref: np.ndarray | None = None) -> None:
        self.feats = np.asarray(feats, np.float64)  # (N, D)
        self.ref_mu = np.asarray(ref_mu, np.float64)  # (D,)
        if self.feats.ndim != 2 or self.feats.shape[1] != len(self.ref_mu) or len(self.feats) < 2:
            raise ValueError(f"need (N >= 2, {len(self.ref_mu)}) features, got {self.feats.shape}")
        self.ref_trace = float(np.trace(ref_cov))
        sqrt_ref = psd_sqrt(np.asarray(ref_cov, np.float64)) if sqrt_ref is None else sqrt_ref
        self.projected = self.feats @ sqrt_ref  # (N, D): rows of F S

    def __call__(self, rows: np.ndarray | None = None) -> float:
        """FID of ``feats[rows]`` (repeats allowed; None = all rows), ddof=1 covariance."""
        f = self.feats if rows is None else self.feats[rows]  # (n, D)
        y = self.projected if rows is None else self.projected[rows]  # (n, D)
        n, d = f.shape
        a, yc = f - f.mean(0), y - y.mean(0)  # centred (n, D): yc = a S
        gram = yc @ yc.T if n <= d else yc.T @ yc  # PSD; non-zero eigenvalues of (n-1) S C S
        ev = _psd_eigvals_clean(np.linalg.eigvalsh(gram)) / (n - 1)
        diff = f.mean(0) - self.ref_mu
        fid = diff @ diff + (a**2).sum() / (n - 1) + self.ref_trace - 2 * np.sqrt(ev).sum()
        return float(max(fid, 0.0))


def _kid_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 of KID, float64 (Na, Nb)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a @ b.T / a.shape[1] + 1) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size (m) samples from their kernel matrices (m, m)."""
    m = len(kxx)
    off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off_diag - 2 * kxy.mean())


def _kid_subsets(n1: int, n2: int, m: int, subsets: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (rows of set 1, rows of set 2) of each KID subset: m of each, without replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield rng.choice(n1, m, replace=False), rng.choice(n2, m, replace=False)


def kernel_inception_distance(
    feats1: np.ndarray, feats2: np.ndarray, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    m = min(subset_size, len(feats1), len(feats2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(feats1)} and {len(feats2)}")
    mmds = np.empty(subsets)
    for s, (i1, i2) in enumerate(_kid_subsets(len(feats1), len(feats2), m, subsets, seed)):
        x, y = feats1[i1], feats2[i2]  # (m, d) each
        mmds[s] = _mmd2_unbiased(_kid_kernel(x, x), _kid_kernel(y, y), _kid_kernel(x, y))
    return float(mmds.mean()), float(mmds.std())


class KIDResampler:
    """KID of row resamples of one generated feature set against fixed reference features.

    Equals ``kernel_inception_distance(feats[rows], ref_feats, subset_size, subsets, seed)`` for
    any ``rows`` of length N (the subset draws depend only on N), but the kernels are computed
    once: gen x gen (N, N), gen x ref (N, R) and the reference subsets' own terms, so a resample
    costs index lookups (bootstrap intervals, ``paired.py``). Memory: 8 (N^2 + N R) bytes.
    """

    def __init__(self, feats: np.ndarray, ref_feats: np.ndarray, subset_size: int = 1000,
                 subsets: int = 100, seed: int = 0) -> None:
        self.n = len(feats)
        self.m = min(subset_size, self.n, len(ref_feats))
        if self.m < 2:
            raise ValueError(f"KID needs at least 2 samples per set, got {self.n} and {len(ref_feats)}")
        self.subsets, self.seed, self.n_ref = subsets, seed, len(ref_feats)
        self.k_gen = _kid_kernel(feats, feats)  # (N, N)
        self.k_cross = _kid_kernel(feats, ref_feats)  # (N, R)
        self.draws = list(_kid_subsets(self.n, self.n_ref, self.m, subsets, seed))
        self.k_ref = [_kid_kernel(ref_feats[i2], ref_feats[i2]) for _, i2 in self.draws]  # (m, m)

    def __call__(self, rows: np.ndarray | None = None) -> tuple[float, float]:
        """(mean, std) KID of ``feats[rows]`` (length N, repeats allowed; None = all rows)."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        if len(rows) != self.n:
            raise ValueError(f"resample must have {self.n} rows (the subset draws depend on it), "
                             f"got {len(rows)}")
        mmds = np.empty(self.subsets)
        for s, ((i1, i2), kyy) in enumerate(zip(self.draws, self.k_ref)):
            idx = rows[i1]  # (m,) generated rows of this subset
            mmds[s] = _mmd2_unbiased(self.k_gen[np.ix_(idx, idx)], kyy, self.k_cross[np.ix_(idx, i2)])
        return float(mmds.mean()), float(mmds.std())


@dataclass(frozen=True)
class ReferenceKey:
    dataset: str  # dataset name as registered (e.g. "cifar10")
    split: str  # split the reference images come from (FIDConfig.ref_split)
    resolution: int  # native side of the reference images in pixels, before the 299 px resize
    n: int | None = None  # first n images of the split's iteration order; None = whole split

    @classmethod
    def from_config(cls, dataset: str, resolution: int, cfg: FIDConfig) -> ReferenceKey:
        return cls(dataset, cfg.ref_split, resolution, cfg.ref_n)


@dataclass
class ReferenceStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, ddof=1 (pytorch-fid's npz names: mu, sigma)
    n: int  # images the statistics were computed from
    kid_features: np.ndarray  # (K, D) float32 uniform sample of rows for KID
    path: str | None = None  # cache file, if cached
    from_cache: bool = False


@dataclass
class ExtractedStats:
    features: FeatureStats
    logits: LogitStats | None
    sizes: set[tuple[int, int]]  # (H, W) of the input images seen


def extract_stats(
    batches: ImageBatches,
    net: InceptionFeatureNet,
    *,
    limit: int | None = None,
    batch_size: int = 200,
    kid_max_n: int = 10_000,
    is_splits: int = 0,
    first_index: int = 0,
    index_stride: int = 1,
) -> ExtractedStats:
    """Run ``net`` over uint8 batches (re-chunked to ``batch_size``), stopping after ``limit``.

    The k-th image of this stream has global index ``first_index + k * index_stride`` (DDP rank r
    of W handling images r, r + W, ...: ``first_index=r, index_stride=W``); the index decides KID
    rows and IS splits, so results do not depend on the process count. Combine shards with
    ``.features.all_reduce_()`` / ``.logits.all_reduce_()``.
    """
    device = next(net.parameters()).device
    feats = FeatureStats(net.feature_dim, keep=kid_max_n, device=device)
    logits = LogitStats(is_splits) if is_splits > 0 and net.has_logits else None
    sizes: set[tuple[int, int]] = set()
    seen = 0
    for batch in batches:
        batch = torch.as_tensor(batch)
        if limit is not None:
            batch = batch[: limit - seen]
        if len(batch) == 0:
            continue
        for chunk in batch.split(batch_size):
            sizes.add((chunk.shape[-2], chunk.shape[-1]))
            out = net(chunk)
            index = first_index + torch.arange(seen, seen + len(chunk)) * index_stride
            feats.update(out.pool3, index)
            if logits is not None and out.logits is not None:
                logits.update(out.logits, index)
            seen += len(chunk)
        if limit is not None and seen >= limit:
            break
    return ExtractedStats(feats, logits, sizes)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", part)


def reference_cache_path(key: ReferenceKey, feature_net_id: str, cache_dir: str) -> str:
    name = "_".join([_safe(key.dataset), _safe(key.split), f"{key.resolution}px",
                     f"n{key.n if key.n is not None else 'all'}", _safe(feature_net_id), RESIZE_ID])
    return os.path.join(cache_dir, f"{name}.npz")


def _key_json(key: ReferenceKey, feature_net_id: str) -> str:
    return json.dumps({**asdict(key), "feature_net": feature_net_id, "resize": RESIZE_ID},
                      sort_keys=True)


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Reference statistics from a cache file written by ``reference_stats`` (no key check)."""
    with np.load(path) as z:
        return ReferenceStats(z["mu"], z["sigma"], int(z["n"]), z["kid_features"], str(path), True)


def _load_cached(path: str, key_json: str, want_kid: int) -> ReferenceStats | None:
    try:
        with np.load(path) as z:
            if str(z["key"]) != key_json or len(z["kid_features"]) < min(want_kid, int(z["n"])):
                return None  # other key (name collision) or too few KID rows: recompute
            return ReferenceStats(z["mu"], z["sigma"], int(z["n"]), z["kid_features"], path, True)
    except (OSError, KeyError, ValueError) as e:
        warnings.warn(f"ignoring unreadable FID reference cache {path}: {e}", stacklevel=3)
        return None


def reference_stats(
    ref_batches_fn: Callable[[], ImageBatches],
    key: ReferenceKey,
    net: InceptionFeatureNet,
    *,
    cache_dir: str | None = ".cache/ssl_diffusion/fid",
    batch_size: int = 200,
    kid_max_n: int = 10_000,
) -> ReferenceStats:
    """Statistics of a reference split: loaded from the .npz cache, or computed and cached.

    ``ref_batches_fn()`` yields uint8 (N, C, H, W) batches of the split in a fixed order; it is only
    called on a cache miss. ``cache_dir=None`` disables caching.
    """
    key_json = _key_json(key, net.feature_net_id)
    path = reference_cache_path(key, net.feature_net_id, cache_dir) if cache_dir else None
    if path and os.path.isfile(path):
        cached = _load_cached(path, key_json, kid_max_n)
        if cached is not None:
            return cached
    ext = extract_stats(ref_batches_fn(), net, limit=key.n, batch_size=batch_size,
                        kid_max_n=kid_max_n)
    got = ext.features.count
    if key.n is not None and got < key.n:
        raise UserError(f"eval.fid.ref_n={key.n} but the {key.dataset} {key.split} split has only "
                        f"{got} images; lower eval.fid.ref_n or set it to null (whole split)")
    if got < 2:
        raise UserError(f"the {key.dataset} {key.split} split gave {got} images; FID needs >= 2")
    if ext.sizes != {(key.resolution, key.resolution)}:
        raise ValueError(f"reference images have sizes {sorted(ext.sizes)} but the key says "
                         f"{key.resolution} px")
    stats = ReferenceStats(ext.features.mean(), ext.features.cov(), got,
                           ext.features.kept_features, path, False)
    if path:
        # atomic: readers never see partial files and concurrent writers (DDP ranks) cannot
        # corrupt the cache
        arrays = {"key": np.array(key_json), "mu": stats.mu, "sigma": stats.sigma,
                  "n": np.array(got), "kid_features": stats.kid_features}
        atomic_write(path, lambda f: np.savez(f, **arrays))
    return stats


def small_n_warning(n_gen: int, n_ref: int, ref_truncated: bool) -> str | None:
    """FID's bias grows as n shrinks (Chong & Forsyth 2020): say so in every small-n result."""
    parts = [f"n_gen={n_gen}"] if n_gen < STANDARD_N else []
    if ref_truncated and n_ref < STANDARD_N:
        parts.append(f"n_ref={n_ref}")
    if not parts:
        return None
    return (f"FID with {' and '.join(parts)} (< {STANDARD_N}) is biased upward and comparable only "
            f"with FIDs at the same n and reference set; KID is unbiased")


def fid_metrics(gen: ExtractedStats, ref: ReferenceStats, key: ReferenceKey, cfg: FIDConfig,
                net: InceptionFeatureNet) -> dict:
    """FID / KID / IS of generated statistics against reference statistics, as the JSON-ready
    dict ``compute_fid`` returns; takes combined (all-reduced) shards too, so sharded and
    single-process results agree. ``gen.sizes`` may be empty on a rank that saw no images."""
    n_gen = gen.features.count
    if n_gen < 2:
        raise UserError(f"FID needs at least 2 generated images, got {n_gen}; raise --n / eval.fid.n")
    if gen.sizes and gen.sizes != {(key.resolution, key.resolution)}:
        raise ValueError(f"generated images have sizes {sorted(gen.sizes)} but the reference "
                         f"statistics are for {key.resolution} px images")
    kept = gen.features.kept_features
    if len(kept) == n_gen and len(ref.kid_features) == ref.n and min(n_gen, ref.n) < len(ref.mu):
        fid = frechet_distance_from_features(kept, ref.kid_features)  # small n: exact, fast
    else:
        fid = frechet_distance(gen.features.mean(), gen.features.cov(), ref.mu, ref.sigma)
    m = min(cfg.kid_subset_size, len(kept), len(ref.kid_features))
    kid_mean, kid_std = (kernel_inception_distance(kept, ref.kid_features, m, cfg.kid_subsets)
                         if m >= 2 else (None, None))
    is_mean = is_std = is_note = None
    if gen.logits is not None:
        is_mean, is_std = gen.logits.score()
    else:
        is_note = ("Inception Score needs classifier logits, which the loaded weights "
                   f"({net.source.kind}) lack; pass torch-fidelity's "
                   "weights-inception-2015-12-05-6726825d.pth as eval.fid.weights to get IS")
    return {
        "fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": m,
        "is": is_mean, "is_std": is_std, "is_note": is_note, "n_gen": n_gen, "n_ref": ref.n,
        "feature_net": net.feature_net_id, "resize": RESIZE_ID,
        "reference": {**asdict(key), "cache": ref.path, "from_cache": ref.from_cache},
        "warning": small_n_warning(n_gen, ref.n, key.n is not None),
    }


def compute_fid(
    gen_batches: ImageBatches,
    ref_key: ReferenceKey,
    ref_batches_fn: Callable[[], ImageBatches],
    cfg: FIDConfig,
    *,
    net: InceptionFeatureNet | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """FID, KID and (where logits exist) IS of generated uint8 batches against a reference split.

    Consumes at most ``cfg.n`` generated images. Returns a JSON-ready dict: fid, kid_mean, kid_std,
    kid_subset_size, is, is_std, is_note, n_gen, n_ref, feature_net, resize, reference, warning.
    """
    net = net if net is not None else load_inception(cfg.weights, device=device)
    ref = reference_stats(ref_batches_fn, ref_key, net, cache_dir=cfg.cache_dir,
                          batch_size=cfg.batch_size, kid_max_n=cfg.kid_max_n)
    gen = extract_stats(gen_batches, net, limit=cfg.n, batch_size=cfg.batch_size,
                        kid_max_n=cfg.kid_max_n, is_splits=cfg.is_splits)
    if gen.features.count < 2:  # a library call's error (fid_metrics' UserError names CLI flags)
        raise ValueError(f"FID needs at least 2 generated images, got {gen.features.count}")
    return fid_metrics(gen, ref, ref_key, cfg, net)
