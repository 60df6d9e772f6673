"""The root config schema: the host sections plus every method's section, and range checks.

Third-party methods add their own section with ``register_section("name", TheirConfig)``
before ``load_config`` runs (e.g. at import of their entry-point module).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssl_diffusion.diffusion.config import AugmentConfig, DiffusionConfig, SamplerConfig
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.config import KNNConfig, LinearConfig
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.host_config import (
    AugConfig,
    BackboneConfig,
    DataConfig,
    EMAConfig,
    FeatureConfig,
    LoggerConfig,
    OnlineEvalConfig,
    OptimConfig,
    RunConfig,
    TrainerConfig,
)
from ssl_diffusion.methods.config import ContrastiveConfig, DDAEConfig, DINOConfig, SimCLRConfig
from ssl_diffusion.models.config import ModelConfig, SelfCondConfig


@dataclass
class EvalConfig(OnlineEvalConfig):
    features: FeatureConfig = field(default_factory=FeatureConfig)  # diffusion (layer, noise)
    knn: KNNConfig = field(default_factory=KNNConfig)  # offline/online weighted kNN protocol
    linear: LinearConfig = field(default_factory=LinearConfig)  # offline linear probe
    fid: FIDConfig = field(default_factory=FIDConfig)  # generation metrics (diffusion methods)


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "aug": AugConfig,
    "backbone": BackboneConfig,
    "optim": OptimConfig,
    "ema": EMAConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
    "simclr": SimCLRConfig,
    "dino": DINOConfig,
    "model": ModelConfig,
    "selfcond": SelfCondConfig,
    "diffusion": DiffusionConfig,
    "sampler": SamplerConfig,
    "augment": AugmentConfig,
    "contrastive": ContrastiveConfig,
    "ddae": DDAEConfig,
}

_ROOT_CACHE: dict[tuple, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add a config section (a dataclass) for a plugin method."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config section `{name}` must be a dataclass, got {cls!r}")
    if name in SECTIONS and SECTIONS[name] is not cls:
        raise ValueError(f"config section `{name}` is already registered")
    SECTIONS[name] = cls


def root_schema() -> type:
    """The root config dataclass for the currently registered sections."""
    from ssl_diffusion.registry import METHODS

    METHODS.names()  # import plugins first: they may register sections
    key = tuple(SECTIONS.items())
    if key not in _ROOT_CACHE:
        fields: list[tuple[str, Any, Any]] = [
            ("method", str, field(default="simclr")),  # method registry name
            ("seed", int, field(default=0)),  # global seed (weights, data order, noise)
        ]
        fields += [(name, cls, field(default_factory=cls)) for name, cls in SECTIONS.items()]
        _ROOT_CACHE[key] = dataclasses.make_dataclass("Config", fields)
    return _ROOT_CACHE[key]


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"invalid value {value!r} for `{key}`: {rule}")


def validate_config(cfg: Any) -> None:
    """Range checks that types alone cannot express (method-specific checks live in methods)."""
    from ssl_diffusion.registry import DATASETS, METHODS

    METHODS.get(cfg.method)  # unknown names fail here, so also under --dry-run
    DATASETS.get(cfg.data.name)
    t, d, o = cfg.trainer, cfg.data, cfg.optim
    # numpy seeds (data order, the train/val split) must lie in [0, 2**32); torch accepts more
    seeds = {"seed": cfg.seed, "data.split_seed": d.split_seed,
             "eval.features.seed": cfg.eval.features.seed, "eval.fid.seed": cfg.eval.fid.seed,
             "eval.linear.seed": cfg.eval.linear.seed}
    for key, value in seeds.items():
        _require(0 <= value < 2**32, key, value, "must be a seed in [0, 2**32 - 1]")
    if t.max_steps is None and t.max_epochs is None:
        raise UserError("set a training length: trainer.max_steps=N or trainer.max_epochs=N")
    if t.max_steps is not None:
        _require(t.max_steps > 0, "trainer.max_steps", t.max_steps, "must be a positive number of steps")
    if t.max_epochs is not None:
        _require(t.max_epochs > 0, "trainer.max_epochs", t.max_epochs, "must be positive")
    _require(t.devices >= 1, "trainer.devices", t.devices, "must be >= 1")
    _require(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "must be >= 1")
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "must be >= 1")
    _require(t.ckpt_every_n_steps >= 0, "trainer.ckpt_every_n_steps", t.ckpt_every_n_steps, "must be >= 0")
    _require(t.last_ckpt_every_n_steps >= 1, "trainer.last_ckpt_every_n_steps",
             t.last_ckpt_every_n_steps, "must be >= 1")
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "must be in [0, 1)")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    _require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    if d.image_size is not None:
        _require(d.image_size >= 8, "data.image_size", d.image_size, "must be >= 8 pixels")
    if d.train_subset is not None:
        _require(d.train_subset >= 1, "data.train_subset", d.train_subset, "must be >= 1")
    _require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _require(len(o.betas) == 2, "optim.betas", o.betas, "must be two numbers, e.g. [0.9, 0.999]")
    if o.grad_clip is not None:
        _require(o.grad_clip > 0, "optim.grad_clip", o.grad_clip, "must be > 0 (or null)")
    _require(0.0 <= cfg.ema.decay < 1.0, "ema.decay", cfg.ema.decay, "must be in [0, 1)")
    e = cfg.eval
    _require(e.every_n_epochs >= 1, "eval.every_n_epochs", e.every_n_epochs, "must be >= 1")
    _require(e.every_n_steps >= 0, "eval.every_n_steps", e.every_n_steps, "must be >= 0")
    if e.bank_size is not None:
        _require(e.bank_size >= 1, "eval.bank_size", e.bank_size, "must be >= 1")
    _require(e.features.shard_rows >= 1, "eval.features.shard_rows", e.features.shard_rows,
             "must be >= 1")
    lin = e.linear
    _require(lin.epochs >= 1, "eval.linear.epochs", lin.epochs, "must be >= 1")
    _require(0 <= lin.warmup_epochs <= lin.epochs, "eval.linear.warmup_epochs", lin.warmup_epochs,
             f"must lie in [0, eval.linear.epochs={lin.epochs}]")
    _require(lin.batch_size >= 1, "eval.linear.batch_size", lin.batch_size, "must be >= 1")
    _require(all(k >= 1 for k in e.knn.k) and e.knn.k, "eval.knn.k", e.knn.k, "must be positive")
    _require(e.knn.temperature > 0, "eval.knn.temperature", e.knn.temperature, "must be > 0")
    a = cfg.aug
    for key in ("cj_prob", "gray_prob", "hflip_prob", "solarize_prob"):
        value = getattr(a, key)
        _require(0.0 <= value <= 1.0, f"aug.{key}", value, "must be a probability in [0, 1]")
    _require(0.0 < a.min_scale <= 1.0, "aug.min_scale", a.min_scale, "must be in (0, 1]")
    for key in ("global_crop_scale", "local_crop_scale"):
        lo_hi = getattr(a, key)
        _require(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1, f"aug.{key}", lo_hi,
                 "must be [low, high] with 0 < low <= high <= 1")
    _require(a.n_local_views >= 0, "aug.n_local_views", a.n_local_views, "must be >= 0")
