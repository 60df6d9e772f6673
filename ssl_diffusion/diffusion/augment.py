"""EDM-style non-leaking geometric augmentation (Karras et al. 2022, App. B.4; used by DDAE's
``EDM_ddpmpp_aug`` and, per the ICLR reviews, by DDAE++'s contrastive views).

Each transform is applied to a sample with probability ``min(p * multiplier, 1)``, and its
parameters are returned as a 9-d label that conditions the network:

    [x-flip, y-flip, log2 scale, cos(theta) - 1, sin(theta), log2 aniso * cos(phi),
     log2 aniso * sin(phi), translate x, translate y]   (translation as a fraction of size)

A transform that is not applied contributes exact zeros, so the zero label is the identity and
the network can be asked for un-augmented images at sampling time ("non-leaking"). Flips are
exact (``torch.flip``); the rest is one affine warp per sample (bilinear ``grid_sample`` with
reflection padding; EDM uses a wavelet-filtered upsampled warp, which aliases less). Samples
with no geometric transform are returned bit-exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_diffusion.diffusion.config import AugmentConfig
from ssl_diffusion.errors import UserError

AUG_DIM = 9  # length of the augmentation label vector


class Augmented(NamedTuple):
    images: Tensor  # (N, C, H, W) augmented images
    labels: Tensor  # (N, 9) transform parameters; zeros = identity


def _rot(c: Tensor, s: Tensor) -> Tensor:
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 2, 2)


class AugmentPipe:
    """Callable ``pipe(images, generator=None) -> Augmented``; deterministic given a generator."""

    def __init__(self, cfg: AugmentConfig):
        for field in ("p", "xflip", "yflip", "scale", "rotate", "aniso", "translate"):
            if getattr(cfg, field) < 0:
                raise UserError(
                    f"augment.{field}={getattr(cfg, field)} is invalid; it must be >= 0"
                )
        self.cfg = cfg

    def _params(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> dict[str, Tensor]:
        """Draw every random number in a fixed order, whatever is enabled (stable streams)."""
        cfg = self.cfg

        def rand(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device=device)

        def randn(*shape: int) -> Tensor:
            return torch.randn(shape, generator=generator, device=device)

        def gate(multiplier: float) -> Tensor:
            return (rand(n) < min(cfg.p * multiplier, 1.0)).float()  # (n,) 1 = transform applied

        xflip = gate(cfg.xflip) * torch.randint(0, 2, (n,), generator=generator, device=device)
        yflip = gate(cfg.yflip) * torch.randint(0, 2, (n,), generator=generator, device=device)
        log_scale = gate(cfg.scale) * randn(n) * cfg.scale_std
        theta = gate(cfg.rotate) * (rand(n) * 2 - 1) * math.pi * cfg.rotate_max
        log_aniso = gate(cfg.aniso) * randn(n) * cfg.aniso_std
        phi = (rand(n) * 2 - 1) * math.pi
        shift = gate(cfg.translate)[:, None] * randn(n, 2) * cfg.translate_std  # (n, 2)
        return {
            "xflip": xflip,
            "yflip": yflip,
            "log_scale": log_scale,
            "theta": theta,
            "log_aniso": log_aniso,
            "phi": phi,
            "shift": shift,
        }

    @staticmethod
    def labels(p: dict[str, Tensor]) -> Tensor:
        cols = [
            p["xflip"],
            p["yflip"],
            p["log_scale"],
            torch.cos(p["theta"]) - 1,
            torch.sin(p["theta"]),
            p["log_aniso"] * torch.cos(p["phi"]),
            p["log_aniso"] * torch.sin(p["phi"]),
            p["shift"][:, 0],
            p["shift"][:, 1],
        ]
        return torch.stack(cols, dim=1)  # (N, 9)

    @staticmethod
    def _warp(images: Tensor, p: dict[str, Tensor]) -> Tensor:
        """Inverse-map each output pixel through scale -> rotate -> aniso -> translate."""
        _, _, h, w = images.shape
        one = torch.ones_like(p["theta"])
        s = torch.exp2(p["log_scale"])
        a = torch.exp2(p["log_aniso"])
        cphi, sphi = torch.cos(p["phi"]), torch.sin(p["phi"])
        scale = torch.diag_embed(torch.stack([s, s], -1))  # (N, 2, 2)
        rot = _rot(torch.cos(p["theta"]), torch.sin(p["theta"]))
        aniso = _rot(cphi, sphi) @ torch.diag_embed(torch.stack([a, 1 / a], -1)) @ _rot(cphi, -sphi)
        lin = aniso @ rot @ scale  # forward map in centred pixel units, (N, 2, 2)
        half = torch.tensor([w / 2, h / 2], device=lin.device)  # normalised <-> pixel units
        trans = p["shift"] * torch.stack([one * w, one * h], -1)  # (N, 2) pixels
        inv = torch.linalg.inv(lin)
        theta = torch.cat([inv, -(inv @ trans[..., None])], dim=2)  # (N, 2, 3) output -> input
        theta = theta / half[None, :, None]  # rows: normalised output coordinates ...
        theta[:, :, :2] = theta[:, :, :2] * half[None, None, :]  # ... of normalised input ones
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
        out = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return out.to(images.dtype)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Augmented:
        n = images.shape[0]
        device = generator.device if generator is not None else images.device
        p = {k: v.to(images.device) for k, v in self._params(n, generator, device).items()}
        out = torch.where(p["xflip"].bool()[:, None, None, None], images.flip(-1), images)
        out = torch.where(p["yflip"].bool()[:, None, None, None], out.flip(-2), out)
        geometric = (
            (p["log_scale"] != 0)
            | (p["theta"] != 0)
            | (p["log_aniso"] != 0)
            | (p["shift"] != 0).any(1)
        )
        if geometric.any():
            idx = geometric.nonzero().squeeze(1)
            sub = {k: v[idx] for k, v in p.items()}
            out = out.clone()
            out[idx] = self._warp(out[idx], sub)
        return Augmented(images=out, labels=self.labels(p).to(images.dtype))
