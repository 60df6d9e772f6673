"""The whole configuration tree in one place: ``Config``, its typed sections and their checks.

Sections come from the library that owns them (``models.config``, ``diffusion.config``,
``eval.config``, ``methods.config``) or from ``config.sections`` (run, data, optimiser, trainer,
...). Every section checks its own ranges in ``validate()``; ``Config.validate`` calls each once
and adds the cross-section checks. Nothing here imports torch, so ``load_config`` and
``--dry-run`` work without it.

Third-party methods add a section with ``register_section("name", TheirConfig)`` before
``load_config`` runs (e.g. at import of their entry-point module); ``root_schema()`` then returns
a subclass of ``Config`` with those extra fields.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ssl_diffusion.config.sections import (
    RESUME,
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
    require,
    resumable,
)
from ssl_diffusion.diffusion.config import AugmentConfig, DiffusionConfig, SamplerConfig
from ssl_diffusion.eval.config import KNNConfig, LinearConfig
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.methods.config import ContrastiveConfig, DDAEConfig, DINOConfig, SimCLRConfig
from ssl_diffusion.models.config import ModelConfig, SelfCondConfig
from ssl_diffusion.registry import DATASETS, METHODS  # name lists only: torch-free


@dataclass
class EvalConfig(OnlineEvalConfig):
    """Evaluation settings; all of them may change between legs of one run."""

    features: FeatureConfig = field(default_factory=FeatureConfig)  # diffusion (layer, noise)
    knn: KNNConfig = field(default_factory=KNNConfig)  # offline/online weighted kNN protocol
    linear: LinearConfig = field(default_factory=LinearConfig)  # offline linear probe
    fid: FIDConfig = field(default_factory=FIDConfig)  # generation metrics (diffusion methods)

    def validate(self) -> None:
        super().validate()
        self.features.validate()
        self.knn.validate()
        self.linear.validate()
        self.fid.validate()


@dataclass
class Config:
    """The root of the config tree: ``cfg.<section>.<key>``, e.g. ``cfg.optim.lr``."""

    method: str = "simclr"  # method registry name (simclr | dino | ddae | ddaepp | plugins)
    seed: int = 0  # global seed (base weights, data order, noise); arms of one seed are paired
    # host sections (config/sections.py)
    # resumable(...) is dataclasses.field(...) with the resume-safe marker (RUF009 cannot see it)
    run: RunConfig = resumable(default_factory=RunConfig)  # noqa: RUF009  (run dir, resume)
    data: DataConfig = field(default_factory=DataConfig)  # dataset, splits, loader
    aug: AugConfig = field(default_factory=AugConfig)  # SimCLR/DINO view augmentations
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # SimCLR/DINO encoder
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and lr schedule
    ema: EMAConfig = field(default_factory=EMAConfig)  # weight EMA
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # length, devices, checkpoints
    eval: EvalConfig = resumable(default_factory=EvalConfig)  # noqa: RUF009  (online + offline)
    logger: LoggerConfig = resumable(default_factory=LoggerConfig)  # noqa: RUF009  (wandb)
    # method sections (methods/config.py)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    ddae: DDAEConfig = field(default_factory=DDAEConfig)  # ddae/ddaepp training knobs
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)  # ddaepp CSD
    # denoiser and diffusion sections (models/config.py, diffusion/config.py)
    model: ModelConfig = field(default_factory=ModelConfig)  # denoiser family and size
    selfcond: SelfCondConfig = field(default_factory=SelfCondConfig)  # DDAE++ self-conditioning
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # objective, noise
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # generation sampler
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # EDM geometric augmentation

    def validate(self) -> None:
        """Range checks that types alone cannot express, each section once.

        Method-specific checks (those that need the built network) live in the methods.
        """
        METHODS.check_name(self.method)  # unknown names fail here, so also under --dry-run
        DATASETS.check_name(self.data.name)
        require(0 <= self.seed < 2**32, "seed", self.seed, "must be a seed in [0, 2**32 - 1]")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()


SECTIONS: dict[str, type] = {
    name: tp for name, tp in typing.get_type_hints(Config).items() if name not in ("method", "seed")
}
_PLUGIN_SECTIONS: dict[str, type] = {}
_ROOT_CACHE: dict[tuple, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add a config section (a dataclass) for a plugin method."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config section `{name}` must be a dataclass, got {cls!r}")
    if name in ("method", "seed") or (name in SECTIONS and SECTIONS[name] is not cls):
        raise ValueError(f"config section `{name}` is already a built-in section")
    if _PLUGIN_SECTIONS.get(name, cls) is not cls:
        raise ValueError(f"config section `{name}` is already registered")
    _PLUGIN_SECTIONS[name] = cls


def root_schema() -> type:
    """``Config``, or a subclass of it with the sections that plugin methods registered."""
    METHODS.load_plugins()  # entry-point modules may register sections (imported by name)
    if not _PLUGIN_SECTIONS:
        return Config
    key = tuple(_PLUGIN_SECTIONS.items())
    if key not in _ROOT_CACHE:
        extra: list[tuple[str, Any, Any]] = [
            (name, cls, field(default_factory=cls)) for name, cls in _PLUGIN_SECTIONS.items()
        ]
        _ROOT_CACHE[key] = dataclasses.make_dataclass("Config", extra, bases=(Config,))
    return _ROOT_CACHE[key]


def resume_safe_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted keys (a section key ends with '.') whose value may change when a run resumes."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        section = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        if f.metadata.get(RESUME):
            keys.append(key + "." if section else key)
        elif section:
            keys += resume_safe_keys(tp, key + ".")
    return keys


def validate_config(cfg: Config) -> None:
    """Validate a whole config (the one entry point the loader calls)."""
    cfg.validate()
