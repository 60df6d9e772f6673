"""Samplers against an oracle denoiser, the exact Gaussian ODE solution and DDPM/DDIM updates
written independently in VP form; per-sample seeds; guidance call counts; sigma grids."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from ssl_diffusion.diffusion import (
    DiffusionConfig,
    SamplerConfig,
    build_objective,
    classifier_free_guidance,
    ddim_sampler,
    ddpm_ancestral_sampler,
    ddpm_sigmas,
    euler_sampler,
    flow_sigmas,
    heun_sampler,
    karras_sigmas,
    per_sample_randn,
    sample,
    seed_generators,
    seeded_randn,
)
from ssl_diffusion.diffusion.noise import DDPMSchedule
from ssl_diffusion.errors import UserError

SHAPE = (3, 4, 4)


def grids():
    return {
        "karras": karras_sigmas(18, 0.002, 80.0, 7.0),
        "ddpm": ddpm_sigmas(DDPMSchedule(), 20),
        "flow": flow_sigmas(12, 999.0),
    }


@pytest.mark.parametrize("grid", ["karras", "ddpm", "flow"])
def test_oracle_denoiser_lands_on_x0(grid):
    sigmas = grids()[grid]
    x0 = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []

    def oracle(x, sigma):
        calls.append(sigma)
        assert sigma.shape == (2,) and (sigma > 0).all()  # never evaluated at sigma = 0
        return x0

    noise = torch.randn(2, *SHAPE)
    gens = seed_generators([0, 1])
    runs = {
        "ddim_eta0": lambda: ddim_sampler(oracle, noise, sigmas),
        "ddim_eta1": lambda: ddim_sampler(oracle, noise, sigmas, eta=1.0, generators=gens),
        "euler": lambda: euler_sampler(oracle, noise, sigmas),
        "heun": lambda: heun_sampler(oracle, noise, sigmas),
        "heun_churn": lambda: heun_sampler(oracle, noise, sigmas, churn=0.4, generators=gens),
        "ddpm_small": lambda: ddpm_ancestral_sampler(oracle, noise, sigmas, generators=gens),
        "ddpm_large": lambda: ddpm_ancestral_sampler(oracle, noise, sigmas, variance="large"),
    }
    steps = len(sigmas) - 1
    for name, run in runs.items():
        calls.clear()
        out = run()
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0, msg=name)
        assert len(calls) == (2 * steps - 1 if name.startswith("heun") else steps), name


def test_gaussian_data_matches_exact_ode_solution():
    """For x0 ~ N(0, sd^2) the ideal denoiser is linear and the PF-ODE has the closed form
    x(sigma) = x(sigma_max) sqrt(sd^2 + sigma^2) / sqrt(sd^2 + sigma_max^2): Heun converges to
    it at 2nd order and Euler at 1st order in the number of steps."""
    sd = 0.5
    denoise = lambda x, s: x * (sd**2 / (sd**2 + s**2))[:, None, None, None]
    noise = torch.randn(4, *SHAPE, dtype=torch.float64)
    exact = noise * 80.0 * sd / np.sqrt(sd**2 + 80.0**2)

    def err(sampler, steps):
        out = sampler(denoise, noise, karras_sigmas(steps, 0.002, 80.0, 7.0))
        return float((out - exact).abs().max() / exact.abs().max())

    heun = [err(heun_sampler, n) for n in (50, 100, 200)]
    euler = [err(euler_sampler, n) for n in (50, 100, 200)]
    assert heun[-1] < 1e-3 and euler[-1] < 5e-2
    for a, b in pairwise(heun):
        assert 3.0 < a / b < 5.0  # halving the step divides the error by ~4
    for a, b in pairwise(euler):
        assert 1.6 < a / b < 2.4  # ... by ~2
    assert err(heun_sampler, 18) < err(euler_sampler, 18)


def test_ddim_eta0_equals_euler_for_any_denoiser(toy_net):
    obj = build_objective(DiffusionConfig(objective="edm"))
    net = toy_net()
    denoise = lambda x, s: obj.denoise(net, x, s).x0
    noise = torch.randn(2, *SHAPE)
    sigmas = karras_sigmas(6, 0.002, 80.0)
    with torch.no_grad():
        torch.testing.assert_close(
            ddim_sampler(denoise, noise, sigmas), euler_sampler(denoise, noise, sigmas)
        )


def _vp_reference(denoise, noise, sigmas, seeds, eta=None, variance=None):
    """DDIM (eta) or DDPM (variance) updates in VP form, as written in DDAE's DDPM.py."""
    gens = seed_generators(seeds)
    s = sigmas.tolist()
    abar = [1.0 / (1.0 + v**2) for v in s]
    x = noise.double() * s[0] * np.sqrt(abar[0])  # VP sample
    for i in range(len(s) - 1):
        a, a_next = abar[i], abar[i + 1]
        x_ve = x / np.sqrt(a)
        x0 = denoise(x_ve, torch.full((x.shape[0],), s[i]))
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        if eta is not None:
            c1 = eta * np.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
            c2 = np.sqrt(1 - a_next - c1**2)
            x = np.sqrt(a_next) * x0 + c2 * eps
        else:
            alpha = a / a_next
            x = (x - (1 - alpha) / np.sqrt(1 - a) * eps) / np.sqrt(alpha)
            c1 = (
                0.0
                if s[i + 1] == 0
                else np.sqrt(1 - alpha)
                * (1.0 if variance == "large" else np.sqrt((1 - a_next) / (1 - a)))
            )
        if c1 > 0:
            x = x + c1 * per_sample_randn(gens, x.shape[1:], dtype=torch.float64)
    return x


@pytest.mark.parametrize("kind", ["ddim0.0", "ddim0.6", "ddim1.0", "ddpm_small", "ddpm_large"])
def test_stochastic_updates_match_vp_formulas(kind):
    sd = 0.5
    denoise = lambda x, s: torch.tanh(x * (sd**2 / (sd**2 + s**2))[:, None, None, None])
    sched = DDPMSchedule()
    sigmas = torch.cat([sched.sigmas[[700, 699, 400, 2]], torch.zeros(1, dtype=torch.float64)])
    noise = torch.randn(3, *SHAPE, dtype=torch.float64)
    seeds = [5, 6, 7]
    if kind.startswith("ddim"):
        eta = float(kind[4:])
        ours = ddim_sampler(denoise, noise, sigmas, eta=eta, generators=seed_generators(seeds))
        ref = _vp_reference(denoise, noise, sigmas, seeds, eta=eta)
    else:
        variance = kind.split("_")[1]
        ours = ddpm_ancestral_sampler(
            denoise, noise, sigmas, generators=seed_generators(seeds), variance=variance
        )
        ref = _vp_reference(denoise, noise, sigmas, seeds, variance=variance)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(
    "objective,sampler", [("edm", "heun"), ("edm", "ddim"), ("ddpm", "ddpm"), ("flow", "euler")]
)
def test_per_sample_seeds_independent_of_batch(objective, sampler, toy_net):
    obj = build_objective(DiffusionConfig(objective=objective))
    net = toy_net()
    cfg = SamplerConfig(sampler=sampler, steps=5, eta=0.7)
    seeds = list(range(8))

    def run(batch_seeds):
        gens = seed_generators(batch_seeds)
        noise = per_sample_randn(gens, SHAPE)
        return sample(obj, net, noise, cfg, generators=gens)

    full = run(seeds)
    singles = torch.cat([run([s]) for s in seeds])
    torch.testing.assert_close(full, singles, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[0], full[1])
    torch.testing.assert_close(seeded_randn([3], SHAPE), seeded_randn([1, 2, 3], SHAPE)[2:])


def test_guidance_call_counts_and_mixing(toy_net, call_counter):
    obj = build_objective(DiffusionConfig(objective="edm"))
    net = call_counter(toy_net(num_classes=4))
    labels = torch.tensor([0, 1, 2])
    noise = torch.randn(3, *SHAPE)
    steps = 4
    sample(obj, net, noise, SamplerConfig(steps=steps, cfg=1.0), class_labels=labels)
    assert net.batch_sizes == [3] * (2 * steps - 1)  # Heun NFE, one call each
    net.batch_sizes.clear()
    sample(obj, net, noise, SamplerConfig(steps=steps, cfg=2.5), class_labels=labels)
    assert net.batch_sizes == [6] * (2 * steps - 1)  # one call of both branches
    # the mix equals uncond + s (cond - uncond) from separate calls
    labelled = lambda x, s, y: obj.denoise(net, x, s, class_labels=y).x0
    sigma = torch.full((3,), 2.0)
    x = noise * 2.0
    with torch.no_grad():
        guided = classifier_free_guidance(labelled, labels, 4, 2.5)(x, sigma)
        cond, uncond = labelled(x, sigma, labels), labelled(x, sigma, torch.full((3,), 4))
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-5)
    assert classifier_free_guidance(labelled, labels, 4, 1.0)(x, sigma).shape == x.shape


def test_sample_clipping_progress_and_errors(fixed_prediction_net, toy_net):
    obj = build_objective(DiffusionConfig(objective="ddpm"))
    net = fixed_prediction_net(lambda x, c: torch.zeros_like(x))  # eps = 0 => x0 = x (huge)
    noise = torch.randn(2, *SHAPE)
    seen = []
    out = sample(
        obj,
        net,
        noise,
        SamplerConfig(sampler="ddim", steps=10),
        progress=lambda i, n: seen.append((i, n)),
    )
    assert out.abs().max() <= 1.0 and seen == [(i, 10) for i in range(10)]
    raw = sample(obj, net, noise, SamplerConfig(sampler="ddim", steps=10, clip_x0=False))
    assert raw.abs().max() > 10.0
    double = sample(obj, toy_net(), noise.double(), SamplerConfig(sampler="ddim", steps=3))
    assert double.dtype == torch.float64  # float64 integration, float32 network
    with pytest.raises(UserError, match="needs class labels"):
        sample(obj, toy_net(), noise, SamplerConfig(cfg=2.0))
    with pytest.raises(UserError, match="did you mean `heun`"):
        sample(obj, toy_net(), noise, SamplerConfig(sampler="hune"))


def test_sigma_grids_match_closed_forms():
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    i = np.arange(n)
    ref = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    k = karras_sigmas(n, lo, hi, rho)
    np.testing.assert_allclose(k[:-1].numpy(), ref, rtol=1e-12)
    assert k[-1] == 0 and k[0] == pytest.approx(hi) and k[-2] == pytest.approx(lo)
    sched = DDPMSchedule()
    d = ddpm_sigmas(sched, 100)
    t = np.arange(991, 0, -10)  # DDAE's DDIM steps 991, 981, ..., 1, then 0
    np.testing.assert_allclose(d[:-1].numpy(), sched.sigmas[t].numpy(), rtol=1e-12)
    assert d[-1] == 0 and len(ddpm_sigmas(sched, 1000)) == 1001
    f = flow_sigmas(10, 999.0)
    np.testing.assert_allclose((f / (1 + f)).numpy(), np.linspace(0.999, 0.0, 11), atol=1e-12)
