"""A trained checkpoint as a plain frozen feature extractor: ``load_encoder(path)``.

    encoder = ssl_diffusion.load_encoder("runs/quickstart_ddaepp/last.ckpt")
    feats = encoder(images)  # (N, C, H, W) normalised like encoder.transform -> (N, D)

The module maps images normalised as the dataset's eval transform (``encoder.transform``, a
torchvision transform of PIL images) to pooled features, the same numbers
``method.extract_features`` and the offline evaluators see. It stays in eval mode and computes
no gradients, so it drops into any frozen-backbone tool (lightly's ``KNNClassifier``, a linear
probe, retrieval code). Diffusion checkpoints tap (layer, noise): by default the cell chosen by
the layer x noise sweep (``metrics.json["sweep"]["chosen"]`` beside the checkpoint), else the
checkpoint's ``eval.features`` config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from ssl_diffusion.app.evaluate import load
from ssl_diffusion.app.run_dir import read_metrics
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.data.transforms import eval_transform, normalization
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.features import describe_spec, encode
from ssl_diffusion.eval.spec import FeatureSpec
from ssl_diffusion.methods.base import SSLMethod


class FrozenEncoder(nn.Module):
    """Images (N, C, H, W) -> features (N, D), frozen, always in eval mode."""

    def __init__(self, method: SSLMethod, spec: FeatureSpec, info: DataInfo,
                 description: dict) -> None:
        super().__init__()
        self.method = method
        self.spec = spec  # layer, sigma, use_ema
        self.info = info  # the dataset's DataInfo (channels, image_size, class_names, ...)
        self.description = description  # JSON-ready: method, layer, noise, sigma, source
        self.transform = eval_transform(info, method.normalization)  # PIL image -> input tensor
        self.normalization = normalization(info, method.normalization)  # {"mean", "std"}
        with_features = spec.layer is not None
        self.feature_dim = (method.net.feature_dims[spec.layer] if with_features
                            else method.feature_dim)
        for p in self.method.parameters():
            p.requires_grad_(False)
        self.train(False)

    @property
    def layer(self) -> str | None:
        return self.spec.layer

    @property
    def sigma(self) -> float | None:
        return self.spec.sigma

    def train(self, mode: bool = True) -> FrozenEncoder:
        """The wrapped method never leaves eval mode (frozen BatchNorm statistics, no dropout)."""
        super().train(mode)
        self.method.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return encode(self.method, self.spec, x)  # (N, D)

    def extra_repr(self) -> str:
        d = self.description
        return f"method={d['method']}, layer={d['layer']}, noise={d['noise']}, dim={self.feature_dim}"


def sweep_choice(ckpt_path: str | Path) -> dict | None:
    """``metrics.json["sweep"]["chosen"]`` next to the checkpoint, if a sweep was run."""
    chosen = read_metrics(Path(ckpt_path).resolve().parent).get("sweep", {}).get("chosen")
    if isinstance(chosen, dict) and {"layer", "noise", "noise_unit"} <= set(chosen):
        return chosen
    return None


def load_encoder(ckpt_path: str | Path, layer: str | None = None, noise: float | None = None,
                 use_ema: bool = True, *, noise_unit: str | None = None,
                 overrides: Sequence[str] = (), device: str | None = None) -> FrozenEncoder:
    """A frozen feature extractor from a checkpoint.

    Args:
        ckpt_path: a ``.ckpt`` written by ``main_pretrain.py``.
        layer: diffusion feature layer (e.g. ``"block2"``); None = the sweep's choice, else the
            config's ``eval.features.layer``. Must be None for SimCLR / DINO.
        noise: noise level in ``noise_unit``; None = the sweep's choice, else the config's.
        use_ema: EMA weights (diffusion methods; ignored by SimCLR / DINO).
        noise_unit: ``sigma`` or ``logsnr``; None = the unit the noise came with.
        overrides: ``key=value`` config overrides applied to the stored config.
        device: where the module lives (default CPU; ``.to()`` works as usual).

    Returns:
        ``FrozenEncoder``: ``forward(x) -> (N, D)``, plus ``transform``, ``feature_dim``,
        ``layer``, ``sigma`` and ``description``.
    """
    loaded = load(ckpt_path, overrides)
    method, cfg = loaded.method, loaded.cfg
    if method.generative:
        chosen = sweep_choice(ckpt_path)
        configured = any(o.split("=", 1)[0].startswith("eval.features.") for o in overrides)
        if chosen is not None and not configured:
            if layer is None:
                layer = chosen["layer"]
            if noise is None:
                noise, noise_unit = chosen["noise"], chosen["noise_unit"]
    elif layer is not None or noise is not None:
        raise UserError(f"{ckpt_path} is a `{cfg.method}` checkpoint: it has one representation "
                        f"(the backbone output); call load_encoder without layer/noise")
    spec = method.feature_spec(layer=layer, noise=noise, unit=noise_unit,
                               use_ema=use_ema if method.generative else None)
    encoder = FrozenEncoder(method, spec, loaded.info, describe_spec(spec, method, noise_unit))
    return encoder.to(device) if device else encoder


__all__ = ["FrozenEncoder", "load_encoder", "sweep_choice"]
