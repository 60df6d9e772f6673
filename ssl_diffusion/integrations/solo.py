"""solo-learn plugin: DDAE / DDAE++ trained and probed by solo-learn's own scripts and configs.

    python <solo-learn>/main_pretrain.py --config-path configs/solo --config-name ddaepp_cifar10
    python <solo-learn>/main_linear.py --config-path configs/solo --config-name linear_cifar10 \
        pretrained_feature_extractor=<solo checkpoint>

solo-learn has no entry points: methods live in the dict ``solo.methods.METHODS`` and backbones
in ``BaseMethod._BACKBONES``. ``register()`` adds ``ddae`` and ``ddaepp`` to both; the configs in
``configs/solo/`` run it through a Hydra callback (``RegisterWithSolo``), so solo's scripts stay
unedited.

solo-learn runs ``lightning.pytorch`` and this project ``pytorch_lightning``: a module of one is
no LightningModule to the other's Trainer. ``SoloDiffusionMethod`` is therefore a solo
``BaseMethod`` whose backbone (``solo_backbone.DiffusionBackbone``) holds this project's method as
a plain submodule, and it does what this project's host would do: passes solo's step counter and
schedule length to the method (contrastive warm-up, teacher momentum), updates the EMA after each
optimiser step, maps solo's mean/std normalisation to the denoiser's [-1, 1], and exposes
``feats`` from the method's feature extraction for solo's online linear head and online kNN
(solo's kNN is a brute-force torchmetrics metric, not faiss).

solo's ``main_pretrain.py`` insists on two large crops; ``method_kwargs.views`` says what the
diffusion loss sees: ``first`` (one crop, default) or ``both`` (the two crops as one 2N batch).
DDAE++ self-distillation draws its own two views inside the method (``contrastive.*``).

Config (solo's Hydra config): ``backbone.name`` (ddae | ddaepp), ``backbone.kwargs.config`` (this
project's sections, see ``solo_backbone``), ``method_kwargs.views``. The adapter fills
``backbone.kwargs`` image_size (crop size), num_classes and input_mean/std (from solo's own eval
pipeline of ``data.dataset``) and records them in the checkpoint, so ``main_linear.py`` only needs
``backbone.kwargs.checkpoint=${pretrained_feature_extractor}``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_diffusion.config import to_dict
from ssl_diffusion.errors import UserError
from ssl_diffusion.integrations.solo_backbone import (
    PLUGIN_METHODS,
    SOLO_META,
    DiffusionBackbone,
    backbone_spec,
)
from ssl_diffusion.methods.base import META_KEY

try:  # optional extra: solo-learn (from its repository) and what it imports
    from hydra.experimental.callback import Callback
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from solo.data.classification_dataloader import prepare_transforms
    from solo.data.pretrain_dataloader import build_transform_pipeline
    from solo.methods import METHODS as SOLO_METHODS
    from solo.methods.base import BaseMethod
    from solo.utils.metrics import accuracy_at_k
    from solo.utils.misc import omegaconf_select
except ImportError as _exc:
    _module = (_exc.name or "solo").split(".")[0]
    _package = {"solo": "solo-learn", "hydra": "hydra-core"}.get(_module, _module)
    raise UserError(
        f"ssl_diffusion's solo-learn plugin needs the package `{_package}` (module `{_module}` is "
        f"missing): pip install 'ssl_diffusion[solo]' and solo-learn from its repository, "
        f"https://github.com/vturrisi/solo-learn") from None

VIEWS = ("first", "both")


def _plain(value: Any) -> Any:
    """OmegaConf nodes -> plain Python containers (resolved)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _normalize_stats(pipeline: Any) -> tuple[list[float], list[float]]:
    """(mean, std) of the Normalize step of a torchvision pipeline solo built."""
    from torchvision import transforms as T

    for t in getattr(pipeline, "transforms", [pipeline]):
        if isinstance(t, T.Normalize):
            return [float(v) for v in t.mean], [float(v) for v in t.std]
    raise UserError(f"solo-learn's pipeline {pipeline} has no Normalize step")


def backbone_factory(name: str) -> Any:
    """solo's backbone builder signature: ``build(method, **kwargs) -> nn.Module``."""

    def build(method: str | None = None, **kwargs: Any) -> DiffusionBackbone:
        return DiffusionBackbone(backbone_spec(name, {k: _plain(v) for k, v in kwargs.items()}))

    build.__name__ = name
    return build


class _SoloClock:
    """What this project's methods read from their trainer, taken from solo's Trainer."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def global_step(self) -> int:
        return int(self._trainer.global_step)

    @property
    def estimated_stepping_batches(self) -> int:
        return int(self._trainer.estimated_stepping_batches)

    @property
    def world_size(self) -> int:
        return int(self._trainer.world_size)

    @property
    def global_rank(self) -> int:  # per-(seed, rank, step) noise streams of the diffusion loss
        return int(self._trainer.global_rank)


class SoloDiffusionMethod(BaseMethod):
    """A solo-learn method whose backbone is a diffusion SSL method of this project."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)  # builds self.backbone from the kwargs filled below
        mk = cfg.method_kwargs
        self.views = mk.views
        # solo's pretraining crops may be normalised differently from its eval pipeline (CIFAR
        # std 0.2435 vs 0.243); the training views are mapped with the training statistics
        self.register_buffer("train_mean", torch.tensor(list(mk.train_mean)), persistent=False)
        self.register_buffer("train_std", torch.tensor(list(mk.train_std)), persistent=False)

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        cfg = super(SoloDiffusionMethod, SoloDiffusionMethod).add_and_assert_specific_cfg(cfg)
        if cfg.backbone.name not in PLUGIN_METHODS:
            raise UserError(f"method `{cfg.method}` needs backbone.name in "
                            f"{', '.join(PLUGIN_METHODS)}, got {cfg.backbone.name}")
        aug = cfg.augmentations[0]
        kw = cfg.backbone.kwargs
        if omegaconf_select(cfg, "backbone.kwargs.checkpoint", None) is None:
            kw.image_size = omegaconf_select(cfg, "backbone.kwargs.image_size", aug.crop_size)
            kw.num_classes = int(cfg.data.num_classes)
            if cfg.data.dataset == "custom" and not cfg.data.no_labels:  # ImageFolder's order
                kw.class_names = sorted(e.name for e in os.scandir(cfg.data.train_path) if e.is_dir())
            mean, std = _normalize_stats(prepare_transforms(cfg.data.dataset)[1])
            kw.input_mean, kw.input_std = mean, std
            kw.config = omegaconf_select(cfg, "backbone.kwargs.config", {})
            kw.config.trainer = {"max_epochs": int(cfg.max_epochs)}
            kw.config.seed = omegaconf_select(cfg, "backbone.kwargs.config.seed", int(cfg.seed))
        mk = cfg.method_kwargs
        mk.views = omegaconf_select(cfg, "method_kwargs.views", "first")
        if mk.views not in VIEWS:
            raise UserError(f"method_kwargs.views={mk.views}; choose from {', '.join(VIEWS)}")
        mk.train_mean, mk.train_std = _normalize_stats(build_transform_pipeline(cfg.data.dataset, aug))
        return cfg

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        # the method's own trainable set: not its EMA copy, momentum teacher or online head
        params = [p for _, p in self.backbone.method.trainable_named_parameters()]
        return [{"name": "backbone", "params": params},
                {"name": "classifier", "params": self.classifier.parameters(),
                 "lr": self.classifier_lr, "weight_decay": 0}]

    def on_fit_start(self) -> None:
        # the method reads global_step / estimated_stepping_batches through its `_trainer`
        self.backbone.method._trainer = _SoloClock(self.trainer)

    def training_step(self, batch: list[Any], batch_idx: int) -> Tensor:
        _, crops, targets = batch
        crops = [crops] if isinstance(crops, Tensor) else crops
        views = [self.backbone.model_input(x, self.train_mean, self.train_std)
                 for x in crops[: self.num_large_crops]]  # each (N, C, S, S) in [-1, 1]
        x = views[0] if self.views == "first" else torch.cat(views)  # (N or 2N, C, S, S)
        labels = targets if self.views == "first" else targets.repeat(len(views))
        method = self.backbone.method
        method.update_teachers()  # momentum teachers first, as the project's host does
        out = method.training_loss([x], labels)
        feats = self.backbone.features(views[0])  # (N, D), no grad: the eval features
        logits = self.classifier(feats)  # (N, num_classes)
        class_loss = F.cross_entropy(logits, targets, ignore_index=-1)
        acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
        metrics = {f"train_{k}": v.detach().float() for k, v in out.items()
                   if k != "feats" and isinstance(v, Tensor) and v.ndim == 0}  # loss_*, lambda
        metrics.update({"train_class_loss": class_loss, "train_acc1": acc1, "train_acc5": acc5})
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        if self.knn_eval:
            keep = targets != -1
            self.knn(train_features=feats[keep], train_targets=targets[keep])
        return out["loss"] + class_loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        method = self.backbone.method
        if method.ema is not None:  # after the step, as the project's own host does
            method.ema.update(method.ema_source())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.backbone.method.on_save_checkpoint(checkpoint)  # this project's metadata
        # the full resolved config, not only the keys the solo config set: a later change of
        # this project's defaults must not change the architecture main_linear.py rebuilds
        kwargs = {**self.backbone.spec.to_kwargs(), "config": to_dict(self.backbone.cfg)}
        checkpoint[META_KEY][SOLO_META] = {
            "backbone": self.backbone.spec.method,
            "backbone_kwargs": kwargs,
            "solo_method": str(self.cfg.method),
            "method_kwargs": {"views": self.views},
        }


def register() -> None:
    """Add ``ddae`` and ``ddaepp`` to solo-learn's method and backbone tables (idempotent)."""
    for name in PLUGIN_METHODS:
        SOLO_METHODS[name] = SoloDiffusionMethod
        BaseMethod._BACKBONES[name] = backbone_factory(name)


class RegisterWithSolo(Callback):
    """Hydra callback: registers the plugin before solo's script reads its config.

    hydra:
      callbacks:
        ssl_diffusion: {_target_: ssl_diffusion.integrations.solo.RegisterWithSolo}
    """

    def __init__(self) -> None:
        register()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        register()


__all__ = ["RegisterWithSolo", "SoloDiffusionMethod", "backbone_factory", "register"]
