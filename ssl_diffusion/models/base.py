"""The denoiser contract shared by DiT, UNet and UViT.

A denoiser is a plain ``nn.Module`` that knows nothing about noise schedules: it maps a
(preconditioned) noisy image and a scalar noise label per sample to a raw prediction, and can
return pooled features of any named layer ("feature taps") on the way.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ssl_diffusion.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from ssl_diffusion.models.selfcond import SelfCondOutput


@contextmanager
def arm_module_rng(tag: str) -> Iterator[None]:
    """Build (and initialise) a module that only some arms of a comparison have.

    Paired comparisons need every arm (ddae, ddaepp, ddaepp + self-distillation, any knob
    ablation) to start from identical base weights for one seed. Modules built inside this
    context draw from their own CPU generator, seeded from the global seed and ``tag``, and the
    global RNG is restored afterwards, so the base network's draws (and every later draw) are
    the same whether or not the extra module exists.
    """
    seed = (torch.initial_seed() + zlib.crc32(tag.encode())) % 2**63
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class DenoiserOutput:
    """Named outputs of one denoiser forward pass (never a bare tuple)."""

    pred: Tensor | None  # (N, C, H, W) raw network output; None when stopped early (stop_after)
    feats: dict[str, Tensor] = field(default_factory=dict)  # layer name -> pooled (N, D_layer)
    selfcond: Tensor | None = None  # pooled source-layer vector z (N, D) before the SC MLP
    selfcond_signal: Tensor | None = None  # s = g(t) * MLP(z) (N, D_cond) added to the condition

    @classmethod
    def from_blocks(cls, feats: dict[str, Tensor], sc: SelfCondOutput | None) -> DenoiserOutput:
        """What the blocks produced; ``pred`` is set by the output head, or stays None when the
        pass stopped early."""
        return cls(pred=None, feats=feats, selfcond=None if sc is None else sc.z,
                   selfcond_signal=None if sc is None else sc.s)


class Denoiser(nn.Module):
    """Base class. Subclasses set ``layer_names`` (network order) and implement ``forward``.

    forward(x, noise_labels, class_labels=None, aug_labels=None, taps=(), stop_after=None)
      x:            (N, C, H, W) network input (already preconditioned by the objective)
      noise_labels: (N,) float noise conditioning (c_noise of the objective, O(1); the
                    sinusoidal embedding scales it by 1000)
      class_labels: (N,) long in [0, num_classes]; ``num_classes`` is the null class (CFG);
                    None means all-null (unconditional)
      aug_labels:   (N, aug_dim) augmentation parameters (zeros at sampling time); None = zeros
      taps:         layer names whose mean-pooled output goes into ``DenoiserOutput.feats``
      stop_after:   a layer name; layers after it are skipped and ``pred`` is None
    """

    layer_names: list[str]
    feature_dims: dict[str, int]  # layer name -> pooled feature width
    default_source_layer: str  # self-conditioning source for source_layer="auto"
    default_feature_layer: str  # feature tap for eval.features.layer="auto"

    def check_layer(self, name: str) -> str:
        if name not in self.layer_names:
            raise UserError(
                f"unknown layer `{name}` for {type(self).__name__}; valid layers: "
                f"{', '.join(self.layer_names)}{did_you_mean(name, self.layer_names)}"
            )
        return name

    def resolve_taps(
        self, taps: Sequence[str] | str, stop_after: str | None
    ) -> tuple[set[str], int]:
        """Validate ``taps`` ("all" = every layer) and ``stop_after``.

        Returns the set of tapped layer names and the index of the last layer that must run.
        """
        if isinstance(taps, str):
            taps = self.layer_names if taps == "all" else [taps]
        wanted = {self.check_layer(name) for name in taps}
        if stop_after is None:
            return wanted, len(self.layer_names) - 1
        last = self.layer_names.index(self.check_layer(stop_after))
        late = [n for n in self.layer_names[last + 1 :] if n in wanted]
        if late:
            raise UserError(
                f"taps {late} lie after stop_after=`{stop_after}`; drop them or stop later"
            )
        return wanted, last

    def resolve_source_layer(self, name: str) -> str:
        """Self-conditioning source: "auto" -> ``default_source_layer``; else a valid layer name."""
        if name == "auto":
            return self.default_source_layer
        if name not in self.layer_names:
            raise UserError(
                f"selfcond.source_layer `{name}` is not a layer of this {type(self).__name__}; "
                f"valid: auto, {', '.join(self.layer_names)}{did_you_mean(name, self.layer_names)}"
            )
        return name
