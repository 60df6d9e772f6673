"""t <-> sigma <-> logSNR conversions against closed forms computed independently in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_diffusion.diffusion import DiffusionConfig, build_objective
from ssl_diffusion.diffusion.noise import (
    DDPMSchedule,
    flow_sigma_to_t,
    flow_t_to_sigma,
    logsnr_from_sigma,
    sigma_from_logsnr,
    vp_scale,
)


def numpy_ddpm(beta_start=1e-4, beta_end=0.02, T=1000):
    betas = np.linspace(beta_start, beta_end, T)
    abar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])  # index = t
    return abar


def test_ddpm_table_matches_numpy_closed_form():
    abar = numpy_ddpm()
    sched = DDPMSchedule()
    np.testing.assert_allclose(sched.alpha_bar.numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(sched.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-12)
    t = torch.arange(1, 1001)
    sigma = sched.t_to_sigma(t.double())
    np.testing.assert_allclose(sigma.numpy(), np.sqrt((1 - abar[1:]) / abar[1:]), rtol=1e-12)
    # logSNR of a VP schedule is log(abar / (1 - abar)) (VDM); ours is -2 ln sigma
    np.testing.assert_allclose(
        logsnr_from_sigma(sigma).numpy(), np.log(abar[1:] / (1 - abar[1:])), rtol=1e-9
    )
    np.testing.assert_allclose(vp_scale(sigma).numpy(), np.sqrt(abar[1:]), rtol=1e-9)
    assert sched.sigma_min == pytest.approx(np.sqrt(1e-4 / (1 - 1e-4)))


def test_ddpm_continuous_round_trip_and_nearest():
    sched = DDPMSchedule()
    t = torch.tensor([0.0, 0.25, 1.0, 1.5, 17.3, 500.0, 999.9, 1000.0], dtype=torch.float64)
    np.testing.assert_allclose(sched.sigma_to_t(sched.t_to_sigma(t)).numpy(), t.numpy(), atol=1e-9)
    sigma = torch.tensor([0.004, 0.01001, 0.1, 1.0, 10.0, 150.0], dtype=torch.float64)
    np.testing.assert_allclose(
        sched.t_to_sigma(sched.sigma_to_t(sigma)).numpy(), sigma.numpy(), rtol=1e-9
    )
    # between two steps, sigma interpolates ln sigma linearly
    table = numpy_ddpm()
    s = np.sqrt((1 - table) / table)
    expected = np.exp(0.3 * np.log(s[41]) + 0.7 * np.log(s[40]))
    assert float(sched.t_to_sigma(torch.tensor(40.3, dtype=torch.float64))) == pytest.approx(
        expected, rel=1e-12
    )
    # nearest: the integer step whose sigma is closest in ln sigma
    probe = torch.tensor([s[40] * 1.0001, s[41] / 1.0001, s[700]], dtype=torch.float64)
    assert sched.sigma_to_t(probe, nearest=True).tolist() == [40.0, 41.0, 700.0]
    # float32 sigmas of the table give (almost) integer t
    t32 = sched.sigma_to_t(sched.sigmas[1:].float())
    assert (t32 - torch.arange(1, 1001)).abs().max() < 1e-3


def test_flow_and_logsnr_closed_forms():
    t = np.array([1e-4, 0.1, 0.5, 0.9, 0.999])
    sigma = flow_t_to_sigma(torch.from_numpy(t))
    np.testing.assert_allclose(sigma.numpy(), t / (1 - t), rtol=1e-12)
    np.testing.assert_allclose(flow_sigma_to_t(sigma).numpy(), t, rtol=1e-12)
    np.testing.assert_allclose(logsnr_from_sigma(sigma).numpy(), 2 * np.log((1 - t) / t), rtol=1e-9)
    lam = np.array([-10.0, 0.0, 3.5, 12.0])
    np.testing.assert_allclose(
        sigma_from_logsnr(torch.from_numpy(lam)).numpy(), np.exp(-lam / 2), rtol=1e-12
    )
    np.testing.assert_allclose(
        logsnr_from_sigma(sigma_from_logsnr(torch.from_numpy(lam))).numpy(), lam, atol=1e-12
    )


@pytest.mark.parametrize(
    "objective,ts",
    [
        ("ddpm", [1.0, 10.0, 123.4, 1000.0]),
        ("edm", [0.002, 0.5, 80.0]),
        ("flow", [0.01, 0.5, 0.99]),
    ],
)
def test_objective_time_round_trips(objective, ts):
    obj = build_objective(DiffusionConfig(objective=objective))
    t = torch.tensor(ts, dtype=torch.float64)
    sigma = obj.t_to_sigma(t)
    np.testing.assert_allclose(obj.sigma_to_t(sigma).numpy(), t.numpy(), rtol=1e-9)
    np.testing.assert_allclose(obj.logsnr(sigma).numpy(), -2 * np.log(sigma.numpy()), rtol=1e-12)
