"""Objectives: preconditioning against the papers' formulas, target/denoise consistency,
noise-level checks, training distributions and a short training run per objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_diffusion.diffusion import DiffusionConfig, build_objective
from ssl_diffusion.errors import UserError
from ssl_diffusion.models.base import DenoiserOutput

OBJECTIVES = ["ddpm", "edm", "flow"]


def test_edm_preconditioning_matches_paper():
    obj = build_objective(DiffusionConfig(objective="edm"))
    s = np.array([0.002, 0.06, 0.5, 3.0, 80.0])
    sd = 0.5
    p = obj.preconditioning(torch.from_numpy(s))
    np.testing.assert_allclose(p.c_skip.numpy(), sd**2 / (s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(p.c_out.numpy(), s * sd / np.sqrt(s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(p.c_in.numpy(), 1 / np.sqrt(s**2 + sd**2), rtol=1e-12)
    np.testing.assert_allclose(p.c_noise.numpy(), np.log(s) / 4, rtol=1e-12)
    np.testing.assert_allclose(
        obj.loss_weight(torch.from_numpy(s)).numpy(), (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-12
    )


def test_net_inputs_match_each_parameterisation():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    ddpm = build_objective(DiffusionConfig(objective="ddpm"))
    t = torch.tensor([1, 10, 500, 1000])
    abar = torch.from_numpy(
        np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))])[t.numpy()]
    ).float()
    x_in, c = ddpm.noisy_input(x0, ddpm.t_to_sigma(t.double()).float(), eps)
    ref = abar.sqrt()[:, None, None, None] * x0 + (1 - abar).sqrt()[:, None, None, None] * eps
    torch.testing.assert_close(x_in, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, t.float() / 1000, atol=1e-5, rtol=0)

    flow = build_objective(DiffusionConfig(objective="flow"))
    tf = torch.tensor([0.05, 0.3, 0.7, 0.95])
    x_in, c = flow.noisy_input(x0, tf / (1 - tf), eps)
    ref = (1 - tf)[:, None, None, None] * x0 + tf[:, None, None, None] * eps
    torch.testing.assert_close(x_in, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c, tf, atol=1e-6, rtol=0)

    edm = build_objective(DiffusionConfig(objective="edm"))
    x_in, c = edm.noisy_input(x0, 2.0, eps)
    torch.testing.assert_close(x_in, (x0 + 2.0 * eps) / math.sqrt(4.25))
    torch.testing.assert_close(c, torch.full((4,), math.log(2.0) / 4))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_exact_target_denoises_to_x0_with_zero_loss(objective, fixed_prediction_net):
    obj = build_objective(DiffusionConfig(objective=objective, cosine_loss_weight=0.5))
    g = torch.Generator().manual_seed(1)
    x0, eps = (
        torch.randn(5, 3, 4, 4, generator=g).clamp(-1, 1),
        torch.randn(5, 3, 4, 4, generator=g),
    )
    sigma = torch.tensor([obj.sigma_min * 1.01, 0.06, 0.5, 5.0, 50.0])
    target = obj.train_target(x0, eps, sigma)
    net = fixed_prediction_net(lambda x, c: target)
    x_ve = x0 + sigma[:, None, None, None] * eps
    x0_hat = obj.denoise(net, x_ve, sigma).x0
    assert torch.allclose(x0_hat, x0, atol=1e-4 * (1 + sigma.max().item()) * 1e-1)
    out = obj.loss(net, x0, sigma=sigma, noise=eps)
    assert float(out["loss"]) < 1e-6
    assert float(out["loss_diffusion"]) < 1e-6


def test_edm_loss_is_weighted_x0_error(toy_net):
    obj = build_objective(DiffusionConfig(objective="edm"))
    net = toy_net()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = obj.loss(net, x0, sigma=sigma, noise=eps, taps=("conv_mid",))
    s, sd = sigma.double().numpy()[:, None], 0.5
    x = (x0 + sigma[:, None, None, None] * eps).double().numpy().reshape(3, -1)
    F = out["output"].pred.double().detach().numpy().reshape(3, -1)
    D = sd**2 / (s**2 + sd**2) * x + s * sd / np.sqrt(s**2 + sd**2) * F
    ref = ((s**2 + sd**2) / (s * sd) ** 2)[:, 0] * (
        (D - x0.double().numpy().reshape(3, -1)) ** 2
    ).mean(1)
    np.testing.assert_allclose(out["loss_per_sample"].detach().numpy(), ref, rtol=1e-4)
    assert out["loss"].item() == pytest.approx(ref.mean(), rel=1e-4)
    assert isinstance(out["output"], DenoiserOutput) and out["output"].selfcond.shape == (3, 16)
    assert out["output"].feats["conv_mid"].shape == (3, 16)


def test_flow_cosine_term_is_added(fixed_prediction_net):
    obj = build_objective(DiffusionConfig(objective="flow", cosine_loss_weight=0.5))
    x0, eps = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)  # target v = eps - x0 = 1
    net = fixed_prediction_net(lambda x, c: -torch.ones_like(x))  # opposite direction
    out = obj.loss(net, x0, sigma=1.0, noise=eps)
    assert float(out["loss_diffusion"]) == pytest.approx(4.0)  # (-1 - 1)^2
    assert float(out["loss_cosine"]) == pytest.approx(2.0)  # 1 - cos(pi)
    assert float(out["loss"]) == pytest.approx(4.0 + 0.5 * 2.0)
    plain = build_objective(DiffusionConfig(objective="flow")).loss(net, x0, sigma=1.0, noise=eps)
    assert "loss_cosine" not in plain and float(plain["loss"]) == pytest.approx(4.0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_check_sigma_rejects_out_of_range(objective):
    obj = build_objective(DiffusionConfig(objective=objective))
    obj.check_sigma([obj.sigma_min, 0.5, obj.sigma_max])
    obj.check_sigma(torch.tensor(obj.sigma_max, dtype=torch.float32))  # float32 round-off is fine
    for bad in (obj.sigma_min / 2, obj.sigma_max * 2, 0.0, float("nan")):
        with pytest.raises(UserError) as err:
            obj.check_sigma(bad)
        msg = str(err.value)
        assert "\n" not in msg and objective in msg and f"{obj.sigma_max:g}" in msg


def test_train_sigma_distributions():
    n = 20000
    g = torch.Generator().manual_seed(0)
    edm = build_objective(DiffusionConfig(objective="edm"))
    log_s = edm.sample_train_sigma(n, generator=g).log()
    assert abs(log_s.mean().item() + 1.2) < 0.05 and abs(log_s.std().item() - 1.2) < 0.05
    flow = build_objective(DiffusionConfig(objective="flow", t_mean=0.5, t_std=0.8))
    t = flow.sigma_to_t(flow.sample_train_sigma(n, generator=g))
    logit = torch.log(t / (1 - t))  # logit-normal t
    assert abs(logit.mean().item() - 0.5) < 0.05 and abs(logit.std().item() - 0.8) < 0.05
    ddpm = build_objective(DiffusionConfig(objective="ddpm"))
    t = ddpm.sigma_to_t(ddpm.sample_train_sigma(n, generator=g))
    assert torch.allclose(t, t.round(), atol=1e-3) and t.min() >= 1 and t.max() <= 1000
    assert abs(t.mean().item() - 500.5) < 10  # uniform on {1..1000}
    uni = build_objective(DiffusionConfig(objective="edm", train_noise="uniform_logsnr"))
    lam = uni.logsnr(uni.sample_train_sigma(n, generator=g))
    lo, hi = -2 * math.log(80.0), -2 * math.log(0.002)
    assert lam.min() >= lo - 1e-4 and lam.max() <= hi + 1e-4
    hist = torch.histc(lam, bins=4, min=lo, max=hi) / n
    assert torch.allclose(hist, torch.full((4,), 0.25), atol=0.02)
    lognormal = build_objective(
        DiffusionConfig(objective="ddpm", train_noise="lognormal", p_std=3.0)
    )
    s = lognormal.sample_train_sigma(n, generator=g)
    assert s.min() >= lognormal.sigma_min and s.max() <= lognormal.sigma_max
    a = edm.sample_train_sigma(8, generator=torch.Generator().manual_seed(5))
    b = edm.sample_train_sigma(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_decreases_on_fixed_batch(objective, toy_net):
    torch.manual_seed(0)
    obj = build_objective(DiffusionConfig(objective=objective))
    net = toy_net().train()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(8, 3, 8, 8, generator=g) * 2 - 1
    sigma = obj.sample_train_sigma(8, generator=g).clamp(obj.sigma_min, 20.0)
    noise = torch.randn(8, 3, 8, 8, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = obj.loss(net, x0, sigma=sigma, noise=noise)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses[::8]


def test_build_objective_errors():
    with pytest.raises(UserError, match="did you mean `edm`"):
        build_objective(DiffusionConfig(objective="emd"))
    with pytest.raises(UserError, match="do not apply to objective ddpm"):
        build_objective(DiffusionConfig(objective="ddpm", sigma_max=10.0))
    with pytest.raises(UserError, match="sigma_min"):
        build_objective(DiffusionConfig(objective="edm", sigma_min=100.0))
    with pytest.raises(UserError, match="p_std"):
        build_objective(DiffusionConfig(p_std=0.0))
    obj = build_objective(DiffusionConfig(objective="flow", sigma_min=0.01, sigma_max=50.0))
    assert (obj.sigma_min, obj.sigma_max) == (0.01, 50.0)
