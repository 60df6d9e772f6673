"""The ``Objective`` contract: noise levels, preconditioning, denoising and the training loss.

An objective turns any network with the ``DenoiserNet`` call contract (``protocols.py``) into a denoiser of VE-noisy images
``x_ve = x0 + sigma * eps`` that returns an x0 estimate, whatever the network predicts (eps,
preconditioned x0 or velocity). Samplers therefore only ever see ``denoise(x_ve, sigma) -> x0``.
Subclasses define four small pieces: ``net_inputs`` (VE sample -> network input and noise
label), ``pred_to_x0``, ``train_target`` and ``diffusion_loss``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ssl_diffusion.diffusion.config import DiffusionConfig
from ssl_diffusion.diffusion.noise import logsnr_from_sigma
from ssl_diffusion.diffusion.protocols import DenoiserNet, NetOutput
from ssl_diffusion.errors import UserError


class NetInput(NamedTuple):
    """What the denoiser receives for a noisy sample."""

    x: Tensor  # (N, C, H, W) preconditioned / rescaled network input
    c_noise: Tensor  # (N,) noise label fed to the network's noise embedding


@dataclass
class DenoiseResult:
    """x0 estimate (VE space) plus the raw network output of the same forward pass."""

    x0: Tensor  # (N, C, H, W)
    out: NetOutput  # the network's whole output (feature taps, self-conditioning pass through)


def batch_sigma(sigma: Tensor | float, n: int, device: torch.device) -> Tensor:
    """A scalar or (N,) noise level as an (N,) float32 tensor on ``device``."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    return sigma.expand(n).contiguous() if sigma.ndim == 0 else sigma.reshape(n)


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """(N,) per-sample scalars -> (N, 1, 1, 1) broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: (N, ...) -> (N,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


class Objective(ABC):
    """Base class of DDPM / EDM / flow objectives (see module docstring)."""

    name: str
    sigma_min: float  # smallest accepted noise level (VE sigma)
    sigma_max: float  # largest accepted noise level; sampling starts here
    range_hint = " or widen diffusion.sigma_min/sigma_max"  # how a user changes the range

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg

    # ----------------------------------------------------------------- noise levels
    def check_sigma(self, sigma: Tensor | float | Sequence[float]) -> None:
        """Raise a one-line UserError when a noise level lies outside [sigma_min, sigma_max]."""
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        lo, hi = self.sigma_min * (1 - 1e-5), self.sigma_max * (1 + 1e-5)  # float32 round-off
        bad = s[~((s >= lo) & (s <= hi))]  # also catches NaN
        if bad.numel():
            lmin, lmax = -2 * math.log(self.sigma_max), -2 * math.log(self.sigma_min)
            raise UserError(
                f"noise level sigma={float(bad[0]):g} is outside the {self.name} range "
                f"[{self.sigma_min:g}, {self.sigma_max:g}] (logSNR [{lmin:.2f}, {lmax:.2f}]); "
                f"pick a sigma in that range{self.range_hint}"
            )

    @abstractmethod
    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        """The objective's own time variable -> VE sigma (see ``noise.py``)."""

    @abstractmethod
    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        """VE sigma -> the objective's own time variable."""

    def logsnr(self, sigma: Tensor | float) -> Tensor:
        return logsnr_from_sigma(sigma)

    @abstractmethod
    def _default_train_sigma(self, n: int, generator: torch.Generator | None) -> Tensor:
        """(n,) float32 CPU/generator-device noise levels of the objective's own distribution."""

    def sample_train_sigma(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw (n,) training noise levels; ``cfg.train_noise`` can swap the distribution."""
        kind = self.cfg.train_noise
        gdev = generator.device if generator is not None else None
        if kind == "default":
            sigma = self._default_train_sigma(n, generator)
        elif kind == "lognormal":  # EDM's ln(sigma) ~ N(P_mean, P_std^2) for any objective
            z = torch.randn(n, generator=generator, device=gdev)
            sigma = (self.cfg.p_mean + self.cfg.p_std * z).exp()
        elif kind == "uniform_logsnr":
            u = torch.rand(n, generator=generator, device=gdev)
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            sigma = (lo + (hi - lo) * u).exp()  # uniform ln(sigma) <=> uniform logSNR
        else:
            raise UserError(
                f"unknown diffusion.train_noise `{kind}`; choose default, lognormal or uniform_logsnr"
            )
        if kind != "default":
            sigma = sigma.clamp(self.sigma_min, self.sigma_max)
        return sigma.to(device=device, dtype=torch.float32)

    @abstractmethod
    def sampling_sigmas(self, steps: int) -> Tensor:
        """(steps + 1,) decreasing noise levels for a sampler, ending with 0."""

    # ----------------------------------------------------------------- network I/O
    @abstractmethod
    def net_inputs(self, x_ve: Tensor, sigma: Tensor) -> NetInput:
        """VE sample (N, C, H, W) at (N,) sigma -> network input and noise label."""

    @abstractmethod
    def pred_to_x0(self, x_ve: Tensor, sigma: Tensor, pred: Tensor) -> Tensor:
        """Raw network prediction -> x0 estimate (N, C, H, W)."""

    @abstractmethod
    def train_target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The value of ``pred`` that makes ``pred_to_x0`` return x0 exactly."""

    @abstractmethod
    def diffusion_loss(
        self, pred: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor
    ) -> dict[str, Tensor]:
        """Per-sample (N,) loss terms; must contain ``loss_diffusion``."""

    def extra_loss_weights(self) -> dict[str, float]:
        """Weights of extra per-sample terms (beyond ``loss_diffusion``) in the total loss."""
        return {}

    def noisy_input(self, x0: Tensor, sigma: Tensor | float, noise: Tensor) -> NetInput:
        """Network input for clean images x0 noised at ``sigma`` with ``noise`` (feature taps)."""
        sigma = batch_sigma(sigma, x0.shape[0], x0.device)
        return self.net_inputs(x0 + bcast(sigma, x0) * noise, sigma)

    def denoise(
        self,
        net: DenoiserNet,
        x_ve: Tensor,
        sigma: Tensor | float,
        class_labels: Tensor | None = None,
        aug_labels: Tensor | None = None,
        taps: Sequence[str] = (),
    ) -> DenoiseResult:
        """x0 estimate of VE-noisy ``x_ve`` (N, C, H, W) at noise level ``sigma``."""
        sigma = batch_sigma(sigma, x_ve.shape[0], x_ve.device)
        x_in, c_noise = self.net_inputs(x_ve, sigma)
        out = net(x_in, c_noise, class_labels=class_labels, aug_labels=aug_labels, taps=tuple(taps))
        return DenoiseResult(x0=self.pred_to_x0(x_ve, sigma, out.pred.to(x_ve.dtype)), out=out)

    def loss(
        self,
        net: DenoiserNet,
        x0: Tensor,
        class_labels: Tensor | None = None,
        aug_labels: Tensor | None = None,
        taps: Sequence[str] = (),
        sigma: Tensor | float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Training loss on clean x0 (N, C, H, W); sigma and noise are drawn when not given.

        Returns ``loss`` (scalar: mean diffusion loss + weighted extra terms), the scalar mean of
        each term (``loss_diffusion``, e.g. ``loss_cosine``), ``loss_per_sample`` (N,), the
        ``sigma`` (N,) used and ``output`` (the network output, for ``selfcond`` / ``feats``).
        """
        n = x0.shape[0]
        if sigma is None:
            sigma = self.sample_train_sigma(n, generator=generator, device=x0.device)
        sigma = batch_sigma(sigma, n, x0.device)
        if noise is None:
            gdev = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=gdev).to(x0)
        x_in, c_noise = self.net_inputs(x0 + bcast(sigma, x0) * noise, sigma)
        out = net(x_in, c_noise, class_labels=class_labels, aug_labels=aug_labels, taps=tuple(taps))
        terms = self.diffusion_loss(out.pred.float(), x0.float(), noise.float(), sigma)
        per_sample = terms["loss_diffusion"]
        for key, weight in self.extra_loss_weights().items():
            per_sample = per_sample + weight * terms[key]
        result: dict[str, Any] = {k: v.mean() for k, v in terms.items()}
        result.update(loss=per_sample.mean(), loss_per_sample=per_sample, sigma=sigma, output=out)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma in [{self.sigma_min:g}, {self.sigma_max:g}])"
