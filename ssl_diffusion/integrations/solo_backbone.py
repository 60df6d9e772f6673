"""A diffusion SSL method of this project as a solo-learn backbone (torch only, no solo import).

solo-learn builds every network from ``backbone.name`` + ``backbone.kwargs`` and keeps its
weights under ``backbone.``; its ``main_linear.py`` rebuilds the backbone the same way and loads
the pretraining checkpoint with ``strict=False`` after stripping ``backbone.``. So the whole method
(denoiser, EMA copy, self-distillation heads and momentum teacher) lives in
``DiffusionBackbone.method``, and a load that leaves any of its tensors missing raises instead of
silently keeping random weights.

Inputs: solo normalises images with a per-channel mean/std, the denoiser expects [-1, 1]
(``SSLMethod.normalization = "symmetric"``); ``model_input`` undoes solo's normalisation and
resizes inputs of another size than the model's (solo's eval pipeline of a custom dataset is
Resize 256 -> CenterCrop 224) with antialiased bilinear interpolation. Features are the method's
``extract_features``: the configured layer and noise level, per-image seeded noise, EMA weights.

``backbone.kwargs`` of a solo config (``BackboneSpec``):
  config: this project's config sections (model, selfcond, diffusion, contrastive, ddae, ema,
      eval.features, sampler, data ...), checked against the typed schema like a recipe
  image_size, channels, num_classes, class_names: the method's ``DataInfo``
  input_mean, input_std: solo's normalisation of the images ``forward`` receives
  checkpoint: a checkpoint written by the plugin; its stored kwargs replace all others (this is
      how ``main_linear.py`` rebuilds exactly the pretrained architecture)
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.app.checkpoint import read_checkpoint_file
from ssl_diffusion.config import Config, config_from_dict, set_dotted
from ssl_diffusion.data.datasets import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.methods.base import META_KEY
from ssl_diffusion.registry import METHODS

PLUGIN_METHODS = ("ddae", "ddaepp")  # names registered into solo-learn (methods and backbones)
SOLO_META = "solo"  # entry of the checkpoint's ssl_diffusion metadata written by the plugin


@dataclass
class BackboneSpec:
    """Everything needed to rebuild the backbone; stored in every checkpoint the plugin writes."""

    method: str  # ddae | ddaepp
    image_size: int  # model resolution (px); solo's crop size
    config: dict = field(default_factory=dict)  # this project's config sections
    channels: int = 3  # solo-learn loads every image as RGB
    num_classes: int = 0  # classes of the dataset (class-conditional models and probes)
    class_names: list[str] = field(default_factory=list)
    input_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # solo's eval stats
    input_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def to_kwargs(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("method")
        return out


def backbone_spec(name: str, kwargs: dict[str, Any]) -> BackboneSpec:
    """The spec of backbone ``name`` from solo's ``backbone.kwargs`` (plain containers)."""
    if name not in PLUGIN_METHODS:
        raise UserError(f"backbone `{name}` is not provided by ssl_diffusion; choose from "
                        f"{', '.join(PLUGIN_METHODS)}")
    kwargs = dict(kwargs)
    ckpt = kwargs.pop("checkpoint", None)
    if ckpt:
        spec = spec_from_checkpoint(ckpt)
        if spec.method != name:
            raise UserError(f"{ckpt} holds backbone `{spec.method}`, but backbone.name={name}; "
                            f"set backbone.name={spec.method}")
        return spec
    known = set(BackboneSpec.__dataclass_fields__) - {"method"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserError(f"unknown backbone.kwargs {', '.join(unknown)} for backbone `{name}`; "
                        f"valid: {', '.join(sorted(known | {'checkpoint'}))}")
    if "image_size" not in kwargs:
        raise UserError(f"backbone `{name}` needs backbone.kwargs.image_size (the model resolution), "
                        f"or backbone.kwargs.checkpoint=<a solo checkpoint of it>")
    return BackboneSpec(method=name, **kwargs)


def spec_from_checkpoint(path: str | Path) -> BackboneSpec:
    meta = read_checkpoint_file(path).get(META_KEY) or {}
    solo = meta.get(SOLO_META)
    if not isinstance(solo, dict) or "backbone_kwargs" not in solo:
        raise UserError(f"{path} was not written by ssl_diffusion's solo-learn plugin (no "
                        f"`{SOLO_META}` metadata); pass a checkpoint of solo's main_pretrain.py")
    return BackboneSpec(method=solo["backbone"], **solo["backbone_kwargs"])


def build_method_config(spec: BackboneSpec) -> Config:
    """This project's validated config of the method inside the backbone.

    solo-learn runs the online kNN / linear head and the optimiser, so the method's own online
    evaluators are off; its trainer section only records the length (solo's ``max_epochs``).
    """
    data = copy.deepcopy(spec.config)
    if data.get("method", spec.method) != spec.method:
        raise UserError(f"backbone.kwargs.config.method={data['method']} contradicts backbone "
                        f"`{spec.method}`; drop it (the backbone name chooses the method)")
    data["method"] = spec.method
    set_dotted(data, "eval.online_knn", False)
    set_dotted(data, "eval.online_linear", False)
    trainer = data.setdefault("trainer", {})
    if trainer.get("max_steps") is None and trainer.get("max_epochs") is None:
        trainer["max_epochs"] = 1  # unused inside solo; the adapter records solo's max_epochs
    data.setdefault("data", {}).setdefault("image_size", spec.image_size)
    return config_from_dict(data, source="backbone.kwargs.config")


def _refuse_partial_load(module: nn.Module, incompatible: Any) -> None:
    # main_linear.py loads with strict=False: a checkpoint of another backbone (or keys renamed on
    # the way) would otherwise leave random weights without a word. Only keys of this module as
    # the root of the load count (nested loads report prefixed names and check themselves).
    own = set(module.state_dict())
    missing = [k for k in incompatible.missing_keys if k in own]
    if missing:
        raise UserError(f"loading backbone `{module.spec.method}` left {len(missing)} of its "
                        f"{len(own)} tensors missing (e.g. `{missing[0]}`); the checkpoint is "
                        f"not a solo-learn checkpoint of this backbone and config")


class DiffusionBackbone(nn.Module):
    """solo-normalised images (N, 3, H, W) -> pooled diffusion features (N, num_features)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = build_method_config(spec)
        self.info = DataInfo(self.cfg.data.name, spec.num_classes, spec.channels, spec.image_size,
                             [0.5] * spec.channels, [0.5] * spec.channels, list(spec.class_names))
        method = METHODS.get(spec.method)(self.cfg, self.info)
        method.validate_config()
        if not method.generative:  # the contract: features are a (layer, noise) grid
            raise UserError(f"method `{spec.method}` is not a diffusion method")
        self.method = method
        self.num_features = int(method.feature_dim)  # solo reads this for its heads
        shape = (1, spec.channels, 1, 1)
        self.register_buffer("input_mean", torch.tensor(spec.input_mean).view(shape), persistent=False)
        self.register_buffer("input_std", torch.tensor(spec.input_std).view(shape), persistent=False)
        self.register_load_state_dict_post_hook(_refuse_partial_load)

    def model_input(self, x: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
        """solo-normalised images -> the denoiser's [-1, 1] inputs at the model resolution."""
        mean = self.input_mean if mean is None else mean.view(self.input_mean.shape).to(x)
        std = self.input_std if std is None else std.view(self.input_std.shape).to(x)
        x = (x * std + mean) * 2.0 - 1.0  # (N, C, H, W) in [-1, 1]
        size = self.spec.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)  # (N, C, size, size)
        return x.contiguous()

    def features(self, x: Tensor) -> Tensor:
        """Model inputs in [-1, 1] -> features (N, D) (the method's eval features, no grad)."""
        return self.method.extract_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(self.model_input(x))  # (N, D)


__all__ = ["PLUGIN_METHODS", "SOLO_META", "BackboneSpec", "DiffusionBackbone", "backbone_spec",
           "build_method_config", "spec_from_checkpoint"]
