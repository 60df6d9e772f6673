"""kNN search and weighted-kNN evaluation against brute-force and library references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval import neighbors
from ssl_diffusion.eval.config import KNNConfig
from ssl_diffusion.eval.exact_dot import canonical_dot
from ssl_diffusion.eval.knn import (
    FaissIndex,
    KNNEvaluator,
    build_index,
    knn_search,
    weighted_knn_predict,
)
from ssl_diffusion.eval.neighbors import plan_chunks


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _reference_topk(bank: np.ndarray, queries: np.ndarray, k: int, normalize: bool = True):
    """Brute force in float64 with (-similarity, index) ordering; exact for the test data."""
    bank, queries = bank.astype(np.float32), queries.astype(np.float32)
    if normalize:
        bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    sims = queries.astype(np.float64) @ bank.astype(np.float64).T  # (Q, N)
    idx = np.stack([np.lexsort((np.arange(len(bank)), -row))[:k] for row in sims])
    return np.take_along_axis(sims, idx, axis=1), idx


def _exact_f32(a: np.ndarray, b: np.ndarray) -> float:
    """Correctly rounded float32 of the exact dot product, via rationals."""
    exact = sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b)), Fraction(0))
    r = np.float32(float(exact))  # float(Fraction) is correctly rounded to float64
    # Resolve the f64 -> f32 double rounding directly against the rational value.
    lo, hi = np.nextafter(r, np.float32(-np.inf)), np.nextafter(r, np.float32(np.inf))
    best = min(
        (lo, r, hi),
        key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.int32)) & 1),
    )
    return float(best)


# ---------------------------------------------------------------------------------- exact dot


def test_canonical_dot_is_correctly_rounded_on_random_data():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 16, generator=g)
    bank = torch.randn(40, 16, generator=g) * torch.logspace(-3, 3, 40)[:, None]
    idx = torch.randint(0, 40, (6, 9), generator=g)
    got = canonical_dot(q, bank, idx)
    for i in range(6):
        for j in range(9):
            assert got[i, j].item() == _exact_f32(q[i].numpy(), bank[idx[i, j]].numpy())


@pytest.mark.parametrize(
    "a, expected",
    [
        ([1.0, 2.0**-24], 1.0),  # exact float32 midpoint: ties to even
        (
            [1.0, 2.0**-24, 2.0**-60],
            1.0 + 2.0**-23,
        ),  # float64 sum lands on the midpoint; exact is above
        ([2.0**-60, 1.0, -1.0], 2.0**-60),  # catastrophic cancellation in float64
        ([1.0, -1.0, 0.0], 0.0),
    ],
)
def test_canonical_dot_hard_cases(a, expected):
    q = torch.tensor([a], dtype=torch.float32)
    bank = torch.ones(1, len(a))
    assert canonical_dot(q, bank, torch.zeros(1, 1, dtype=torch.long)).item() == expected


def test_canonical_dot_does_not_depend_on_batch_context():
    q, bank = _features(5, 48, 1), _features(300, 48, 2)
    idx = torch.randint(0, 300, (5, 37), generator=torch.Generator().manual_seed(3))
    full = canonical_dot(q, bank, idx)
    for i in range(5):
        assert torch.equal(
            canonical_dot(q[i : i + 1], bank, idx[i : i + 1, 5:20]), full[i : i + 1, 5:20]
        )


# ----------------------------------------------------------------------------------- search

SEARCH_CASES = [
    # (bank size, queries, dim, k, chunk_size, max_memory_mb): chunks that do not divide the sizes
    (257, 31, 8, 1, None, 256),
    (600, 70, 24, 37, 13, 0.01),  # 2621-entry blocks: 13 queries x 201 bank rows
    (1000, 129, 33, 100, 64, 0.05),  # 204 bank rows per block, k + margin > block
    (180, 40, 5, 180, 7, 0.002),  # k = bank size
]


@pytest.mark.parametrize("n, q, d, k, chunk, mem", SEARCH_CASES)
def test_backends_and_chunkings_identical_and_exact(n, q, d, k, chunk, mem):
    bank, queries = _features(n, d, 0), _features(q, d, 1)
    ref_sims, ref_idx = _reference_topk(bank.numpy(), queries.numpy(), k)
    results = [
        knn_search(bank, queries, k, backend="torch"),
        knn_search(bank, queries, k, backend="torch", chunk_size=chunk, max_memory_mb=mem),
        knn_search(bank, queries, k, backend="faiss"),
        knn_search(bank, queries, k, backend="faiss", chunk_size=chunk, max_memory_mb=mem),
        knn_search(bank.numpy(), queries.numpy(), k, backend="auto"),
    ]
    for r in results:
        assert torch.equal(r.indices, results[0].indices)
        assert torch.equal(r.similarities, results[0].similarities)
        assert r.num_exact_fallback == 0  # random data: the candidate certificate always holds
    np.testing.assert_array_equal(results[0].indices.numpy(), ref_idx)
    np.testing.assert_allclose(results[0].similarities.numpy(), ref_sims, rtol=0, atol=1e-6)


def test_ties_broken_by_lower_index_on_every_backend():
    # Small integer features: every dot product is exact, so ties are real and frequent.
    g = torch.Generator().manual_seed(4)
    bank = torch.randint(-2, 3, (400, 6), generator=g).float()
    bank = torch.cat([bank, bank[:50]])  # exact duplicate rows as well
    queries = torch.randint(-2, 3, (60, 6), generator=g).float()
    _, ref_idx = _reference_topk(bank.numpy(), queries.numpy(), 40, normalize=False)
    for backend, chunk, mem in [("torch", None, 256), ("torch", 9, 0.003), ("faiss", 11, 256)]:
        r = knn_search(
            bank, queries, 40, backend=backend, normalize=False, chunk_size=chunk, max_memory_mb=mem
        )
        np.testing.assert_array_equal(r.indices.numpy(), ref_idx)
        assert r.num_exact_fallback > 0  # heavy ties exercise the exact scan


def test_all_equal_bank_returns_lowest_indices_with_small_buffers(monkeypatch):
    # Every similarity ties: the certificate fails and the exact scan ranks all 1000 rows, in
    # column chunks of 128 rows (forced small re-scoring buffer).
    monkeypatch.setattr(neighbors, "_RESCORE_BYTES", 128 * 8 * 4)
    bank = torch.ones(1000, 8)
    queries = _features(3, 8, 0)
    for backend in ("torch", "faiss"):
        r = knn_search(bank, queries, 20, backend=backend, max_memory_mb=0.01)
        assert r.num_exact_fallback == 3
        assert torch.equal(r.indices, torch.arange(20).expand(3, 20))


def test_plan_chunks_respects_memory_bound():
    for q, n, mem, chunk in [
        (10_000, 1_000_000, 256, None),
        (50, 10, 1, None),
        (7, 5000, 0.01, 3),
        (3000, 50_000, 64, 512),
    ]:
        plan = plan_chunks(q, n, mem, chunk)
        assert plan.query_chunk * plan.bank_chunk * 4 <= mem * 2**20
        assert 1 <= plan.query_chunk <= q and 1 <= plan.bank_chunk <= n
    plan = plan_chunks(10_000, 1_000_000, 256)  # a 1M-row bank is scanned in blocks, not at once
    assert plan.bank_chunk < 1_000_000


def test_ivf_with_all_cells_probed_equals_flat(tmp_path):
    bank, queries = _features(800, 16, 5), _features(40, 16, 6)
    flat = knn_search(bank, queries, 25)
    ivf = build_index(bank, index="ivf", nlist=8, nprobe=8)  # every cell scanned: exhaustive
    got = ivf.search(queries, 25)
    assert torch.equal(got.indices, flat.indices) and torch.equal(
        got.similarities, flat.similarities
    )
    ivf.save(tmp_path / "gallery.ivf")
    again = FaissIndex.load(tmp_path / "gallery.ivf").search(queries, 25)
    assert torch.equal(again.indices, flat.indices)


def test_flat_index_save_load_roundtrip(tmp_path):
    bank, queries = _features(300, 12, 7), _features(9, 12, 8)
    index = FaissIndex.build(bank)
    index.save(tmp_path / "gallery.faiss")
    loaded = FaissIndex.load(tmp_path / "gallery.faiss")
    assert len(loaded) == 300 and loaded.dim == 12 and loaded.normalize
    direct = knn_search(bank, queries, 5)
    for backend in ("faiss", "torch"):
        got = loaded.search(queries, 5, backend=backend)
        assert torch.equal(got.indices, direct.indices) and torch.equal(
            got.similarities, direct.similarities
        )


# ------------------------------------------------------------------------------------- vote


def _numpy_vote(sims: np.ndarray, labels: np.ndarray, num_classes: int, t: float) -> np.ndarray:
    scores = np.zeros((len(sims), num_classes))
    for i in range(len(sims)):
        for s, c in zip(sims[i], labels[i]):
            scores[i, c] += math.exp(s / t)
    return scores


def test_weighted_vote_matches_numpy_reference():
    g = torch.Generator().manual_seed(9)
    sims = torch.rand(20, 15, generator=g).sort(dim=1, descending=True).values * 2 - 1
    labels = torch.randint(0, 7, (20, 15), generator=g)
    ours = weighted_knn_predict(sims, labels, 7, 0.07).numpy()
    ref = _numpy_vote(sims.double().numpy(), labels.numpy(), 7, 0.07)
    # Rows are rescaled by exp(-max_sim / T): compare normalised vote shares and rankings.
    np.testing.assert_allclose(
        ours / ours.sum(1, keepdims=True), ref / ref.sum(1, keepdims=True), rtol=1e-12
    )
    np.testing.assert_array_equal(
        np.argsort(-ours, axis=1, kind="stable")[:, :5],
        np.argsort(-ref, axis=1, kind="stable")[:, :5],
    )


def test_evaluator_matches_numpy_reference_top1_top5():
    bank, queries = _features(200, 10, 10), _features(60, 10, 11)
    bank_y = torch.randint(0, 8, (200,), generator=torch.Generator().manual_seed(12))
    query_y = torch.randint(0, 8, (60,), generator=torch.Generator().manual_seed(13))
    out = KNNEvaluator(KNNConfig(k=[5, 20], report_k=5)).evaluate(bank, bank_y, queries, query_y, 8)
    for k in (5, 20):
        sims, idx = _reference_topk(bank.numpy(), queries.numpy(), k)
        scores = _numpy_vote(sims, bank_y.numpy()[idx], 8, 0.07)
        order = np.argsort(-scores, axis=1, kind="stable")
        assert out[f"knn_top1@k{k}"] == pytest.approx(100 * np.mean(order[:, 0] == query_y.numpy()))
        assert out[f"knn_top5@k{k}"] == pytest.approx(
            100 * np.mean((order[:, :5] == query_y.numpy()[:, None]).any(1))
        )
    assert out["knn_top1"] == out["knn_top1@k5"] and out["knn_top5"] == out["knn_top5@k5"]
    assert out["protocol"]["backend"] == "torch" and out["protocol"]["bank_size"] == 200


def test_agrees_with_lightly_knn_predict():
    from lightly.utils.benchmarking import knn_predict

    bank = torch.nn.functional.normalize(_features(500, 32, 14), dim=1)
    queries = torch.nn.functional.normalize(_features(80, 32, 15), dim=1)
    bank_y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(16))
    for k, t in [(20, 0.07), (200, 0.1)]:
        lightly_pred = knn_predict(
            queries, bank.T.contiguous(), bank_y, 10, knn_k=k, knn_t=t
        )  # bank is (D, N)
        r = knn_search(bank, queries, k)
        ours = weighted_knn_predict(r.similarities, bank_y[r.indices], 10, t)
        np.testing.assert_array_equal(ours.argmax(dim=1).numpy(), lightly_pred[:, 0].numpy())
        np.testing.assert_array_equal(
            ours.argsort(dim=1, descending=True, stable=True)[:, :5].numpy(),
            lightly_pred[:, :5].numpy(),
        )


def test_all_k_from_one_search_equal_separate_searches():
    bank, queries = _features(300, 16, 17), _features(30, 16, 18)
    bank_y = torch.arange(300) % 6
    query_y = torch.arange(30) % 6
    joint = KNNEvaluator(KNNConfig(k=[3, 50], report_k=3)).evaluate(
        bank, bank_y, queries, query_y, 6
    )
    for k in (3, 50):
        alone = KNNEvaluator(KNNConfig(k=[k], report_k=k)).evaluate(
            bank, bank_y, queries, query_y, 6
        )
        assert (
            joint[f"knn_top1@k{k}"] == alone["knn_top1"]
            and joint[f"knn_top5@k{k}"] == alone["knn_top5"]
        )


def test_separable_clusters_reach_full_accuracy():
    g = torch.Generator().manual_seed(19)
    centers = torch.randn(5, 24, generator=g) * 10
    bank_y, query_y = torch.arange(250) % 5, torch.arange(50) % 5
    bank = centers[bank_y] + torch.randn(250, 24, generator=g)
    queries = centers[query_y] + torch.randn(50, 24, generator=g)
    out = KNNEvaluator(KNNConfig(k=[10, 20])).evaluate(bank, bank_y, queries, query_y, 5)
    assert out["knn_top1"] == 100.0 and out["knn_top1@k10"] == 100.0


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "cfg, bank_n, query_d, labels_hi, match",
    [
        (
            KNNConfig(k=[10, 200], report_k=10),
            100,
            8,
            3,
            "asks for 200 neighbours but the bank has 100",
        ),
        (KNNConfig(k=[10], report_k=10), 100, 9, 3, "dimension 9 but the bank has 8"),
        (KNNConfig(k=[10], report_k=10), 100, 8, 4, r"labels span \[0, 4\] but num_classes=4"),
    ],
)
def test_bad_inputs_raise_user_error(cfg, bank_n, query_d, labels_hi, match):
    bank, queries = _features(bank_n, 8, 0), _features(5, query_d, 1)
    bank_y = torch.arange(bank_n) % (labels_hi + 1)
    with pytest.raises(UserError, match=match) as err:
        KNNEvaluator(cfg).evaluate(bank, bank_y, queries, torch.zeros(5, dtype=torch.long), 4)
    assert "\n" not in str(err.value)  # one line for the CLI


def test_bad_config_and_features_raise_user_error():
    with pytest.raises(UserError, match="did you mean `faiss`"):
        KNNEvaluator(KNNConfig(backend="fiass"))
    with pytest.raises(UserError, match="report_k=20 is not in"):
        KNNEvaluator(KNNConfig(k=[10]))
    with pytest.raises(UserError, match="needs the faiss backend"):
        KNNEvaluator(KNNConfig(backend="torch", index="ivf"))
    bank = _features(20, 4, 0)
    bank[3, 1] = float("nan")
    with pytest.raises(UserError, match="NaN or inf"):
        knn_search(bank, _features(2, 4, 1), 3)
    with pytest.raises(UserError, match=r"k=0 is outside \[1, bank size 20\]"):
        knn_search(_features(20, 4, 0), _features(2, 4, 1), 0)
    with pytest.raises(UserError, match="no faiss index at"):
        FaissIndex.load("/nonexistent/gallery.faiss")
