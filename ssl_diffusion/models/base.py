"""The denoiser contract shared by DiT, UNet and UViT.

A denoiser is a plain ``nn.Module`` that knows nothing about noise schedules: it maps a
(preconditioned) noisy image and a scalar noise label per sample to a raw prediction, and can
return pooled features of any named layer ("feature taps") on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class DenoiserOutput:
    """Named outputs of one denoiser forward pass (never a bare tuple)."""

    pred: Tensor | None  # (N, C, H, W) raw network output; None when stopped early (stop_after)
    feats: dict[str, Tensor] = field(default_factory=dict)  # layer name -> pooled (N, D_layer)
    selfcond: Tensor | None = None  # pooled source-layer vector z (N, D) before the SC MLP


class Denoiser(nn.Module):
    """Base class. Subclasses set ``layer_names`` (network order) and implement ``forward``.

    forward(x, noise_labels, class_labels=None, aug_labels=None, taps=(), stop_after=None)
      x:            (N, C, H, W) network input (already preconditioned by the objective)
      noise_labels: (N,) float noise conditioning (c_noise of the objective)
      class_labels: (N,) long in [0, num_classes]; ``num_classes`` is the null class (CFG);
                    None means all-null (unconditional)
      aug_labels:   (N, aug_dim) augmentation parameters (zeros at sampling time); None = zeros
      taps:         layer names whose mean-pooled output goes into ``DenoiserOutput.feats``
      stop_after:   a layer name; layers after it are skipped and ``pred`` is None
    """

    layer_names: list[str]
    feature_dims: dict[str, int]  # layer name -> pooled feature width

    def check_layer(self, name: str) -> str:
        from ssl_diffusion.errors import UserError, did_you_mean

        if name not in self.layer_names:
            raise UserError(
                f"unknown layer `{name}` for {type(self).__name__}; valid layers: "
                f"{', '.join(self.layer_names)}{did_you_mean(name, self.layer_names)}"
            )
        return name
