"""Typed defaults of the host layer: run, data, augmentation, backbone, optimiser, EMA, trainer,
online evaluation and logging. Torch-free so that `--dry-run` and config errors are instant.

Each section checks its own ranges in ``validate()`` (called once, by ``Config.validate``).
Fields that may change when a run is resumed carry ``metadata={RESUME: True}`` (see
``resume_safe``); any other difference means the run directory holds a different experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ssl_diffusion.errors import UserError

RESUME = "resume_safe"  # field metadata key: the value may change between legs of one run


def resumable(default: Any = None, **kwargs: Any) -> Any:
    """A dataclass field whose value may change when the same run is resumed."""
    if "default_factory" in kwargs:
        return field(metadata={RESUME: True}, **kwargs)
    return field(default=default, metadata={RESUME: True}, **kwargs)


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise the one-line error for a value outside its range (NaN fails every range)."""
    if isinstance(value, float) and math.isnan(value):
        ok = False
    if not ok:
        raise UserError(f"invalid value {value!r} for `{key}`: {rule}")


def require_probability(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        require(0.0 <= value <= 1.0, f"{section}.{name}", value, "must be a probability in [0, 1]")


@dataclass
class RunConfig:
    name: str | None = resumable()  # run directory name under `root`; None = the recipe's stem
    root: str = resumable("runs")  # parent folder of all run directories
    overwrite: bool = resumable(False)  # allow reusing a directory of a different recipe
    resume: bool = resumable(True)  # re-running the same command resumes from `last.ckpt`


@dataclass
class DataConfig:
    name: str = "digits"  # dataset registry name (digits, fashion_mnist, cifar10, imagefolder, ...)
    root: str = resumable("data")  # folder of torchvision-layout datasets / imagefolder dirs
    download: bool = resumable(False)  # let torchvision download a missing dataset (network)
    image_size: int | None = None  # resize to this many pixels; None = native (digits: 16)
    val_fraction: float = 0.1  # of the training split held out for model selection (not test)
    split_seed: int = 0  # seed of the fixed train/val partition
    train_subset: int | None = None  # cap on training images (quick runs); None = all
    batch_size: int = 128  # per device
    num_workers: int = resumable(2)  # dataloader worker processes (0 = in the main process)
    fake_size: int = 512  # number of images of the `fake` dataset (tests)
    fake_channels: int = 3  # channels of the `fake` dataset (1 = grey)

    def validate(self) -> None:
        require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction,
                "must be in [0, 1)")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        require(0 <= self.split_seed < 2**32, "data.split_seed", self.split_seed,
                "must be a seed in [0, 2**32 - 1]")
        if self.image_size is not None:
            require(self.image_size >= 8, "data.image_size", self.image_size, "must be >= 8 pixels")
        if self.train_subset is not None:
            require(self.train_subset >= 1, "data.train_subset", self.train_subset, "must be >= 1")


@dataclass
class AugConfig:
    preset: str | None = None  # simclr | dino | diffusion | eval; None = the method's default
    min_scale: float = 0.08  # SimCLR random-resized-crop lower scale bound
    cj_prob: float = 0.8  # colour-jitter probability (no-op on grey images except brightness/contrast)
    cj_strength: float = 0.5  # colour-jitter strength (0.5 for small images, as solo-learn/CIFAR)
    gray_prob: float = 0.2  # random grayscale probability
    blur_prob: float | None = None  # Gaussian blur probability; None = 0.5 if >= 64 px else 0
    hflip_prob: float = 0.5  # horizontal flip probability
    solarize_prob: float = 0.2  # DINO second-global-view solarisation probability
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])  # DINO
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])  # DINO
    n_local_views: int = 6  # DINO local crops
    local_crop_size: int | None = None  # None = 3/7 of the image size (96 px at 224 px)

    def validate(self) -> None:
        require_probability("aug", self, "cj_prob", "gray_prob", "hflip_prob", "solarize_prob")
        require(0.0 < self.min_scale <= 1.0, "aug.min_scale", self.min_scale, "must be in (0, 1]")
        for key in ("global_crop_scale", "local_crop_scale"):
            lo_hi = getattr(self, key)
            require(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1, f"aug.{key}", lo_hi,
                    "must be [low, high] with 0 < low <= high <= 1")
        require(self.n_local_views >= 0, "aug.n_local_views", self.n_local_views, "must be >= 0")


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # backbone registry name: resnet18, resnet50, vit_tiny, vit_small
    cifar_stem: bool | None = None  # ResNet 3x3 stem without max-pool; None = auto (<= 64 px)
    patch_size: int | None = None  # ViT patch size; None = image_size // 8 (4 px at 32 px)
    drop_path: float = 0.0  # ViT stochastic depth
    width: int | None = None  # ViT width override (None = the preset's)
    depth: int | None = None  # ViT depth override
    heads: int | None = None  # ViT heads override

    def validate(self) -> None:
        require(0.0 <= self.drop_path < 1.0, "backbone.drop_path", self.drop_path,
                "must be in [0, 1)")


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd", "lars"] = "adamw"
    lr: float = 1e-3  # base learning rate (see lr_scaling)
    lr_scaling: Literal["none", "linear"] = "none"  # linear: lr * global_batch / 256
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam(W)
    momentum: float = 0.9  # SGD / LARS
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = None  # max global gradient norm; None = no clipping

    def validate(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                self.betas, "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio,
                "must be in [0, 1]")
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0 (or null)")


@dataclass
class EMAConfig:
    enabled: bool | None = None  # EMA copy of the weights; None = the method's default
    # (on for diffusion methods, off for SimCLR/DINO whose teacher is already an average)
    decay: float = 0.999  # EMA decay ceiling
    warmup: bool = True  # ramp the decay as min(decay, (1 + step) / (10 + step))

    def validate(self) -> None:
        require(0.0 <= self.decay < 1.0, "ema.decay", self.decay, "must be in [0, 1)")


@dataclass
class TrainerConfig:
    # Training length. Extending a run on resume keeps its lr / teacher-momentum schedules as
    # they were (their length is pinned in `schedule_steps`); the extra steps run at the
    # schedules' final values.
    max_steps: int | None = resumable()  # optimiser steps; give this or max_epochs
    max_epochs: int | None = resumable()
    # Length of the lr and teacher-momentum schedules in steps; None = the whole run. Set when a
    # resumed run is extended, so that the schedules keep the shape they started with.
    schedule_steps: int | None = None
    accelerator: str = resumable("auto")  # cpu | gpu | auto
    devices: int = resumable(1)  # devices per node
    num_nodes: int = resumable(1)
    strategy: str = resumable("auto")  # auto | ddp | ddp_find_unused_parameters_true | fsdp
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"] = "32-true"
    log_every_n_steps: int = resumable(10)
    ckpt_every_n_steps: int = resumable(0)  # also save a periodic step-N.ckpt; 0 = only last
    last_ckpt_every_n_steps: int = resumable(50)  # how often last.ckpt is refreshed
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    progress_bar: bool = resumable(True)
    compile: bool = False  # torch.compile the network (GPU)
    on_nonfinite: Literal["stop", "skip"] = resumable("stop")  # NaN/Inf loss: stop or skip step

    def validate(self) -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise UserError("set a training length: trainer.max_steps=N or trainer.max_epochs=N")
        for key in ("max_steps", "max_epochs", "schedule_steps"):
            value = getattr(self, key)
            if value is not None:
                require(value > 0, f"trainer.{key}", value, "must be a positive number")
        for key in ("devices", "num_nodes", "log_every_n_steps", "last_ckpt_every_n_steps"):
            require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "must be >= 1")
        require(self.ckpt_every_n_steps >= 0, "trainer.ckpt_every_n_steps",
                self.ckpt_every_n_steps, "must be >= 0")


@dataclass
class FeatureConfig:
    layer: str = "auto"  # diffusion feature tap (layer name); auto = the model's default tap
    noise: float = 0.06  # noise level of the features (unit below); EDM/DDAE default sigma 0.06
    noise_unit: Literal["sigma", "logsnr"] = "sigma"  # sigma = VE-equivalent; logSNR = -2 ln sigma
    use_ema: bool = True  # EMA weights for features (raw weights with false)
    seed: int = 0  # per-sample feature noise is seeded by (seed, image content)
    # on-disk feature cache of the offline evaluators: one float32 .npy per split, or float16
    # shards (eval/feature_shards.py; half the disk, for ImageNet-scale linear probing)
    cache: Literal["npy", "fp16_shards"] = "npy"
    shard_rows: int = 100_000  # rows per float16 shard

    def validate(self) -> None:
        require(0 <= self.seed < 2**32, "eval.features.seed", self.seed,
                "must be a seed in [0, 2**32 - 1]")
        require(self.shard_rows >= 1, "eval.features.shard_rows", self.shard_rows, "must be >= 1")


@dataclass
class OnlineEvalConfig:
    every_n_epochs: int = 1  # online kNN / linear evaluation period (epochs)
    every_n_steps: int = 0  # if > 0: evaluate every N steps instead of every_n_epochs
    online_knn: bool = True
    online_linear: bool = True  # linear head on detached feats, its own param group
    online_linear_lr: float | None = None  # None = optim.lr
    bank_size: int | None = 10000  # online kNN bank: at most this many training images
    val_size: int | None = None  # cap on validation images used online

    def validate(self) -> None:
        require(self.every_n_epochs >= 1, "eval.every_n_epochs", self.every_n_epochs, "must be >= 1")
        require(self.every_n_steps >= 0, "eval.every_n_steps", self.every_n_steps, "must be >= 0")
        if self.bank_size is not None:
            require(self.bank_size >= 1, "eval.bank_size", self.bank_size, "must be >= 1")


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"  # online syncs to wandb.ai
    project: str = "ssl_diffusion"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)  # CSV logging is always on
