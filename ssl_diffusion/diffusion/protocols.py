"""What the diffusion package needs from a network: a call contract, not an architecture.

Objectives and samplers call ``net(x, c_noise, class_labels=..., aug_labels=..., taps=...)`` and
read ``.pred`` from the result; anything else the network returns (feature taps, the DDAE++
self-conditioning vector) is passed through untouched. ``models.Denoiser`` satisfies this
protocol; ``diffusion/`` never imports ``models/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor


class NetOutput(Protocol):
    """A network output with a raw prediction (N, C, H, W); other fields pass through."""

    pred: Tensor | None


class DenoiserNet(Protocol):
    """The call contract of a denoiser network (see ``models/base.py`` for the reference)."""

    def __call__(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = ...,
                 aug_labels: Tensor | None = ..., taps: Sequence[str] | str = ...,
                 **kwargs: Any) -> NetOutput: ...
