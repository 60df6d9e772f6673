"""Noise levels: the one place that converts between schedule time t, VE sigma and logSNR.

Every objective is expressed through the variance-exploding (VE) equivalent noise level sigma:
a noisy image is ``x_ve = x0 + sigma * eps``. Other parameterisations are rescalings of it:

* DDPM / VP:  ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``  <=>  ``x_t / sqrt(abar) = x0 + sigma eps``
  with ``sigma = sqrt((1 - abar) / abar)`` (Kingma et al. 2021, "Variational Diffusion Models").
* Flow (linear path): ``x_t = (1 - t) x0 + t eps``  <=>  ``x_t / (1 - t) = x0 + sigma eps``
  with ``sigma = t / (1 - t)``; hence logit(t) = ln(sigma).
* EDM: t is sigma itself (Karras et al. 2022).

``logSNR = ln(alpha^2 / sigma_vp^2) = -2 ln(sigma)`` for all of them. All functions are
vectorised over tensors and keep the input's device and dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_diffusion.errors import UserError, did_you_mean

NOISE_UNITS = ("sigma", "logsnr")  # how configs and CLIs give a noise level


def _tensor(x: Tensor | float) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float32)


def logsnr_from_sigma(sigma: Tensor | float) -> Tensor:
    """logSNR = -2 ln(sigma) (VDM eq. 2 with alpha^2 = 1 / (1 + sigma^2))."""
    return -2.0 * torch.log(_tensor(sigma))


def sigma_from_logsnr(logsnr: Tensor | float) -> Tensor:
    """Inverse of ``logsnr_from_sigma``: sigma = exp(-logSNR / 2)."""
    return torch.exp(-0.5 * _tensor(logsnr))


def _check_unit(unit: str) -> None:
    if unit not in NOISE_UNITS:
        raise UserError(f"unknown noise unit `{unit}`; choose one of {', '.join(NOISE_UNITS)}"
                        f"{did_you_mean(unit, NOISE_UNITS)}")


def to_sigma(noise: float, unit: str) -> float:
    """A noise level given as VE ``sigma`` or ``logsnr`` (= -2 ln sigma) -> sigma (float64)."""
    _check_unit(unit)
    return float(noise) if unit == "sigma" else math.exp(-0.5 * float(noise))


def from_sigma(sigma: float, unit: str) -> float:
    """VE sigma -> the noise level in ``unit`` (``sigma`` or ``logsnr``), float64."""
    _check_unit(unit)
    return float(sigma) if unit == "sigma" else -2.0 * math.log(sigma) + 0.0  # no -0.0


def vp_scale(sigma: Tensor | float) -> Tensor:
    """sqrt(abar) = 1 / sqrt(1 + sigma^2): multiplies a VE sample into the VP (DDPM) space."""
    return torch.rsqrt(1.0 + _tensor(sigma) ** 2)


def flow_t_to_sigma(t: Tensor | float) -> Tensor:
    """Linear-path time t in [0, 1) (1 = pure noise) -> VE sigma = t / (1 - t)."""
    t = _tensor(t)
    return t / (1.0 - t)


def flow_sigma_to_t(sigma: Tensor | float) -> Tensor:
    """VE sigma -> linear-path time t = sigma / (1 + sigma); stable for large sigma."""
    sigma = _tensor(sigma)
    return sigma / (1.0 + sigma)


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 interpolation keeps table look-ups exact to ~1e-12; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class DDPMSchedule:
    """Discrete linear-beta schedule of DDPM, with t in {0, ..., T} and continuous interpolation.

    ``beta_t = linspace(beta_start, beta_end, T)`` for t = 1..T and ``abar_t = prod_{s<=t}(1 -
    beta_s)`` with ``abar_0 = 1`` (sigma_0 = 0), matching the DDAE code. Between integer steps, ln
    sigma is interpolated linearly in t (for t in [0, 1], sigma itself), so a continuous sampler
    or training distribution can ask for any sigma and gets a fractional t.
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_timesteps: int = 1000):
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        self.alpha_bar = abar  # (T+1,) float64, abar_0 = 1
        self.sigmas = torch.sqrt((1.0 - abar) / abar)  # (T+1,) increasing, sigmas[0] = 0
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def sigma_min(self) -> float:
        """sigma at t = 1, the smallest non-zero noise level of the schedule."""
        return float(self.sigmas[1])

    @property
    def sigma_max(self) -> float:
        """sigma at t = T."""
        return float(self.sigmas[-1])

    def _table(self, device: torch.device) -> Tensor:
        key = (device, _work_dtype(device))
        if key not in self._cache:
            self._cache[key] = self.sigmas.to(device=device, dtype=key[1])
        return self._cache[key]

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        """Continuous t in [0, T] -> sigma; integer t gives the table value exactly."""
        t = _tensor(t)
        table = self._table(t.device)  # (T+1,)
        tt = t.to(table.dtype).clamp(0, self.num_timesteps)
        lo = tt.floor().clamp(max=self.num_timesteps - 1).long()
        w = tt - lo
        s_lo, s_hi = table[lo], table[lo + 1]
        log_interp = torch.exp(torch.lerp(s_lo.clamp_min(1e-300).log(), s_hi.log(), w))
        sigma = torch.where(lo == 0, s_hi * w, log_interp)  # t < 1: linear from sigma_0 = 0
        sigma = torch.where(w == 0, s_lo, sigma)  # exact at integer t
        return sigma.to(t.dtype if t.is_floating_point() else torch.float32)

    def sigma_to_t(self, sigma: Tensor | float, nearest: bool = False) -> Tensor:
        """sigma -> continuous t in [0, T] (inverse of ``t_to_sigma``), or the nearest integer t.

        ``nearest`` rounds the continuous t, i.e. picks the neighbouring step closest in ln sigma.
        Sigmas above sigma(T) map to T.
        """
        sigma = _tensor(sigma)
        table = self._table(sigma.device)
        s = sigma.to(table.dtype)
        log_table = table[1:].log()  # (T,), entry k is t = k + 1
        log_s = s.clamp_min(1e-300).log()
        idx = torch.searchsorted(log_table, log_s).clamp(1, self.num_timesteps - 1)
        lo, hi = log_table[idx - 1], log_table[idx]
        t = idx.to(table.dtype) + (log_s - lo) / (hi - lo)
        t = torch.where(s < table[1], s / table[1], t).clamp(0, self.num_timesteps)
        if nearest:
            t = t.round()
        return t.to(sigma.dtype)
