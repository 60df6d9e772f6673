"""Linear probe: protocol (BN without affine), schedule, determinism, accuracy, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.config import LinearConfig
from ssl_diffusion.eval.linear import LinearProbe, fit_linear_probe, lr_at, train_linear_probe
from ssl_diffusion.optim import LARS

FAST = LinearConfig(epochs=30, warmup_epochs=3, batch_size=64)


def _separable(n: int, d: int, classes: int, seed: int):
    """Labels = argmax of a random linear map, with a margin: linearly separable by construction."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, classes, generator=torch.Generator().manual_seed(123))
    x = torch.randn(4 * n, d, generator=g) * 3 + 5  # off-centre and scaled: BN has work to do
    logits = (x - 5) @ w
    top2 = logits.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > 4.0  # margin
    x, y = x[keep][:n], logits[keep][:n].argmax(dim=1)
    assert len(x) == n
    return x, y


def test_separable_features_reach_99_percent():
    xtr, ytr = _separable(600, 16, 4, seed=0)
    xte, yte = _separable(300, 16, 4, seed=1)
    out = train_linear_probe(xtr, ytr, {"val": (xtr, ytr), "test": (xte, yte)}, 4, FAST)
    assert out["val_top1"] >= 99.0 and out["test_top1"] >= 99.0
    assert out["test_top5"] == 100.0  # 4 classes: top-5 covers all
    assert out["protocol"]["model"] == "BatchNorm1d(affine=False) + Linear"
    assert out["protocol"]["peak_lr"] == pytest.approx(0.1 * 64 / 256)
    assert out["protocol"]["steps"] == 30 * (600 // 64)  # last incomplete batch dropped


def test_probe_is_batchnorm_without_affine_then_linear():
    probe = LinearProbe(10, 3)
    assert isinstance(probe.bn, torch.nn.BatchNorm1d) and not probe.bn.affine
    assert [n for n, _ in probe.named_parameters()] == ["linear.weight", "linear.bias"]
    x = torch.randn(32, 10) * 4 + 2
    standardized = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-6)
    torch.testing.assert_close(probe.train()(x), probe.linear(standardized))


def test_bn_makes_the_probe_invariant_to_feature_scale():
    xtr, ytr = _separable(512, 8, 3, seed=2)
    xte, _ = _separable(64, 8, 3, seed=3)
    # ~100 steps, so BN's running statistics (momentum 0.1) have forgotten their init (var = 1).
    cfg = LinearConfig(epochs=3, warmup_epochs=1, batch_size=16)
    small = fit_linear_probe(xtr, ytr, 3, cfg).probe
    large = fit_linear_probe(xtr * 1000, ytr, 3, cfg).probe
    torch.testing.assert_close(small.linear.weight, large.linear.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small(xte), large(xte * 1000), rtol=1e-3, atol=1e-3)


def test_same_seed_same_result_other_seed_differs():
    x, y = _separable(200, 8, 3, seed=4)
    cfg = LinearConfig(epochs=2, warmup_epochs=1, batch_size=32, seed=7)
    a = fit_linear_probe(x, y, 3, cfg).probe
    b = fit_linear_probe(x, y, 3, cfg).probe
    c = fit_linear_probe(
        x, y, 3, LinearConfig(epochs=2, warmup_epochs=1, batch_size=32, seed=8)
    ).probe
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(
        a.bn.running_mean, b.bn.running_mean
    )
    assert not torch.equal(a.linear.weight, c.linear.weight)


@pytest.mark.parametrize("optimizer, lr", [("adamw", 0.05), ("lars", 400.0)])
def test_other_optimizers_learn(optimizer, lr):
    # LARS steps are eta=0.001 times the weight norm: it needs MAE-sized learning rates.
    x, y = _separable(400, 8, 3, seed=5)
    cfg = LinearConfig(optimizer=optimizer, lr=lr, epochs=20, warmup_epochs=1, batch_size=64)
    assert train_linear_probe(x, y, {"train": (x, y)}, 3, cfg)["train_top1"] >= 95.0


def test_lr_schedule_warmup_then_cosine():
    cfg = LinearConfig(lr=0.2, batch_size=512, epochs=10, warmup_epochs=2)
    peak = 0.2 * 512 / 256
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(1.0, cfg) == pytest.approx(peak / 2)
    assert lr_at(2.0, cfg) == pytest.approx(peak)
    assert lr_at(6.0, cfg) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(10.0, cfg) == pytest.approx(0.0, abs=1e-12)


def test_lars_step_matches_trust_ratio_formula():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])
    LARS(
        [{"params": [w], "weight_decay": 0.5}, {"params": [b], "weight_decay": 0.0}], lr=0.1
    ).step()
    update = np.array([0.0, 2.0]) + 0.5 * np.array([3.0, 4.0])  # grad + wd * w
    trust = 0.001 * 5.0 / np.linalg.norm(update)
    np.testing.assert_allclose(
        w.detach().numpy()[0], np.array([3.0, 4.0]) - 0.1 * trust * update, rtol=1e-6
    )
    assert b.item() == pytest.approx(1.0 - 0.1 * 0.5)  # bias: plain SGD, no trust ratio


def test_feature_fn_hook_recomputes_features_each_epoch():
    x, y = _separable(300, 8, 3, seed=6)
    seen = []

    def augmented(epoch: int):
        seen.append(epoch)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(epoch)) * 0.05
        return x + noise, y

    cfg = LinearConfig(epochs=6, warmup_epochs=1, batch_size=32)
    out = train_linear_probe(augmented, None, {"test": (x, y)}, 3, cfg)
    assert seen == list(range(6)) and out["protocol"]["feature_fn"] is True
    assert out["test_top1"] >= 95.0
    with pytest.raises(UserError, match="train_labels must be None"):
        train_linear_probe(augmented, y, {}, 3, cfg)


def test_bad_inputs_raise_user_error():
    x, y = _separable(100, 8, 3, seed=7)
    with pytest.raises(UserError, match="did you mean `sgd`"):
        train_linear_probe(x, y, {}, 3, LinearConfig(optimizer="sdg"))
    with pytest.raises(UserError, match=r"labels span \[0, 2\] but num_classes=2"):
        train_linear_probe(x, y, {}, 2, FAST)
    with pytest.raises(UserError, match="dimension 5 but the training features have 8"):
        train_linear_probe(
            x, y, {"test": (torch.randn(4, 5), torch.zeros(4, dtype=torch.long))}, 3, FAST
        )
    with pytest.raises(UserError, match=r"must have shape \(100,\)"):
        train_linear_probe(x, y[:50], {}, 3, FAST)
    with pytest.raises(UserError, match="warmup_epochs=20"):
        train_linear_probe(x, y, {}, 3, LinearConfig(epochs=10, warmup_epochs=20))
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(UserError, match="NaN or inf"):
        train_linear_probe(bad, y, {}, 3, FAST)
