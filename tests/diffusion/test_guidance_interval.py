"""Guidance interval and the LightningDiT timestep-shift convention (sampler.cfg_max_sigma,
sampler.shift), against direct computations."""

from __future__ import annotations

import pytest
import torch

from ssl_diffusion.diffusion.config import DiffusionConfig, SamplerConfig
from ssl_diffusion.diffusion.generate import check_sampler_config, classifier_free_guidance
from ssl_diffusion.diffusion.noise import flow_sigma_to_t
from ssl_diffusion.diffusion.objectives import build_objective
from ssl_diffusion.errors import UserError


def _oracle(calls: list[int]):
    def denoise(x, sigma, labels):  # cond -> +1, null (label 9) -> -1, plus x
        calls.append(len(x))
        sign = torch.where(labels == 9, -1.0, 1.0).view(-1, 1, 1, 1)
        return x + sign
    return denoise


def test_guidance_only_inside_the_interval():
    calls: list[int] = []
    guided = classifier_free_guidance(_oracle(calls), torch.tensor([1, 2]), 9, 3.0, max_sigma=5.0)
    x = torch.zeros(2, 1, 2, 2)
    out = guided(x, torch.tensor([1.0, 7.0]))  # sample 0 inside, sample 1 outside
    assert torch.allclose(out[0], torch.full((1, 2, 2), -1 + 3 * 2.0))  # uncond + s(cond-uncond)
    assert torch.allclose(out[1], torch.ones(1, 2, 2))  # conditional alone
    calls.clear()
    out = guided(x, torch.tensor([6.0, 7.0]))  # both outside: one call of N, not 2N
    assert calls == [2] and torch.allclose(out, torch.ones_like(out))
    everywhere = classifier_free_guidance(_oracle([]), torch.tensor([1, 2]), 9, 3.0)
    assert torch.allclose(everywhere(x, torch.tensor([6.0, 7.0])), torch.full_like(x, 5.0))


def test_shift_matches_lightningdit_convention():
    """LightningDiT integrates data time t_d from 0 (noise) to 1 with t_m = s t / (1 + (s-1) t),
    s = 0.3; our grid in noise time u = 1 - t_d with sampler.shift = 1/s is the same grid."""
    obj = build_objective(DiffusionConfig(objective="flow", sigma_max=999.0))
    steps, s = 10, 0.3
    ours = flow_sigma_to_t(obj.sampling_sigmas(steps) * (1 / s))  # noise time u, (steps+1,)
    t_max = 999.0 / 1000.0
    t_d = torch.linspace(1 - t_max, 1.0, steps + 1, dtype=torch.float64)  # data time
    t_m = s * t_d / (1 + (s - 1) * t_d)
    assert torch.allclose(ours, 1 - t_m, atol=1e-9)


def test_bad_guidance_interval_is_one_line():
    with pytest.raises(UserError, match="cfg_max_sigma"):
        check_sampler_config(SamplerConfig(cfg_max_sigma=0.0))
