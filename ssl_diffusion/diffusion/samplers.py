"""Samplers as pure functions of a ``denoise(x, sigma) -> x0`` callable.

All samplers work in VE space (``x = x0 + sigma * eps``, see ``noise.py``), so the same code
drives DDPM, EDM and flow models: the objective turns its network into the ``denoise``
callable. A sampler takes unit-variance initial ``noise`` (N, C, H, W), scales it by
``sigmas[0]``, and walks an explicit decreasing grid ``sigmas`` (steps + 1,) that ends at 0.
The final step always lands on sigma = 0 without evaluating the denoiser there.

Stochastic samplers draw fresh noise from one ``torch.Generator`` per sample (``rng.py``), so a
sample depends only on its own seed, not on the batch it was generated in (as in NVlabs/edm2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ssl_diffusion.diffusion.noise import DDPMSchedule, flow_t_to_sigma
from ssl_diffusion.diffusion.rng import per_sample_randn

Denoise = Callable[[Tensor, Tensor], Tensor]  # (x (N,C,H,W) VE, sigma (N,)) -> x0 (N,C,H,W)
Progress = Callable[[int, int], None]  # (step index, total steps)


# ----------------------------------------------------------------------------- sigma grids
def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM time steps (Karras et al. 2022, eq. 5): (steps + 1,) float64, last entry 0."""
    i = torch.arange(steps, dtype=torch.float64)
    denom = max(steps - 1, 1)
    inv_rho = 1.0 / rho
    s = (sigma_max**inv_rho + i / denom * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def ddpm_sigmas(schedule: DDPMSchedule, steps: int) -> Tensor:
    """A subset of the discrete DDPM steps for DDIM / ancestral sampling: (steps + 1,) float64.

    Uses DDAE's spacing t = 1 + k * (T // steps), k = steps-1..0, then t = 0 (sigma 0); with
    steps = T this is the full ancestral chain T, ..., 1.
    """
    T = schedule.num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"ddpm sampling needs 1 <= steps <= {T}, got {steps}")
    t = 1 + (T // steps) * torch.arange(steps - 1, -1, -1)
    return torch.cat([schedule.sigmas[t], torch.zeros(1, dtype=torch.float64)])


def flow_sigmas(steps: int, sigma_max: float) -> Tensor:
    """Uniform grid in flow time t from t(sigma_max) to 0 (LightningDiT's Euler grid), as sigmas."""
    t_max = sigma_max / (1.0 + sigma_max)
    return flow_t_to_sigma(torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64))


# ----------------------------------------------------------------------------- helpers
def _step_sigma(sigma: Tensor, x: Tensor) -> Tensor:
    return sigma.to(device=x.device, dtype=torch.float32).expand(x.shape[0])  # (N,)


def _randn_like(x: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
    if generators is None:
        return torch.randn_like(x)
    return per_sample_randn(generators, x.shape[1:], device=x.device, dtype=x.dtype)


def _start(noise: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must be a 1-D decreasing grid of >= 2 entries ending with 0")
    return noise * float(sigmas[0]), sigmas


# ----------------------------------------------------------------------------- samplers
def euler_sampler(
    denoise: Denoise, noise: Tensor, sigmas: Tensor, progress: Progress | None = None
) -> Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM Alg. 1 w/o
    the correction). In VE space this equals deterministic DDIM and the flow-matching Euler step."""
    x, sigmas = _start(noise, sigmas)
    steps = len(sigmas) - 1
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, _step_sigma(sigmas[i], x))) / s  # (N, C, H, W)
        x = x + (s_next - s) * d
        if progress is not None:
            progress(i, steps)
    return x


def heun_sampler(
    denoise: Denoise,
    noise: Tensor,
    sigmas: Tensor,
    churn: float = 0.0,
    churn_range: tuple[float, float] = (0.0, math.inf),
    generators: Sequence[torch.Generator] | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """EDM 2nd-order Heun (Karras et al. 2022, Alg. 1; Alg. 2 when ``churn`` > 0).

    The last step to sigma = 0 is Euler, so NFE = 2 * steps - 1 (35 for EDM's 18 steps).
    ``churn`` is EDM's gamma: for sigma in ``churn_range`` the state is first re-noised to
    sigma_hat = (1 + gamma) sigma (DDAE sets gamma = (sqrt(2) - 1) * eta); 0 is deterministic.
    """
    x, sigmas = _start(noise, sigmas)
    steps = len(sigmas) - 1
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if churn > 0 and churn_range[0] <= s <= churn_range[1]:
            s_hat = s * (1.0 + churn)
            x = x + (s_hat**2 - s**2) ** 0.5 * _randn_like(x, generators)
            s = s_hat
        d = (x - denoise(x, _step_sigma(torch.tensor(s), x))) / s  # (N, C, H, W)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, _step_sigma(sigmas[i + 1], x))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        if progress is not None:
            progress(i, steps)
    return x


def ddim_sampler(
    denoise: Denoise,
    noise: Tensor,
    sigmas: Tensor,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) written in VE space.

    Dividing DDIM's VP update by sqrt(abar_next) gives x' = x0 + sqrt(s'^2 - c) eps + sqrt(c) z
    with fresh-noise variance c = eta^2 s'^2 (s^2 - s'^2) / s^2 (s, s' = current / next sigma);
    eta = 0 is deterministic, eta = 1 is the DDPM posterior q(x_{t-1} | x_t, x0).
    """
    x, sigmas = _start(noise, sigmas)
    steps = len(sigmas) - 1
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _step_sigma(sigmas[i], x))
        eps = (x - x0) / s  # eps estimate consistent with the (possibly clipped) x0
        c = eta**2 * s_next**2 * (s**2 - s_next**2) / s**2
        x = x0 + max(s_next**2 - c, 0.0) ** 0.5 * eps
        if c > 0:
            x = x + c**0.5 * _randn_like(x, generators)
        if progress is not None:
            progress(i, steps)
    return x


def ddpm_ancestral_sampler(
    denoise: Denoise,
    noise: Tensor,
    sigmas: Tensor,
    generators: Sequence[torch.Generator] | None = None,
    variance: Literal["small", "large"] = "small",
    progress: Progress | None = None,
) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) in VE space, over any grid.

    The mean is the posterior mean x0 + (s'/s)^2 (x - x0). ``variance="small"`` uses the
    posterior variance (beta-tilde, = DDIM eta 1); ``"large"`` uses beta_t as in the DDPM paper
    and DDAE, i.e. VE variance (s^2 - s'^2)(1 + s'^2) / (1 + s^2), with no noise on the final step.
    """
    x, sigmas = _start(noise, sigmas)
    steps = len(sigmas) - 1
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _step_sigma(sigmas[i], x))
        x = x0 + (s_next / s) ** 2 * (x - x0)
        if s_next > 0:
            if variance == "small":
                c = s_next**2 * (s**2 - s_next**2) / s**2
            else:
                c = (s**2 - s_next**2) * (1 + s_next**2) / (1 + s**2)
            x = x + c**0.5 * _randn_like(x, generators)
        if progress is not None:
            progress(i, steps)
    return x
