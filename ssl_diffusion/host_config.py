"""Typed defaults of the host layer: run, data, augmentation, backbone, optimiser, EMA, trainer,
online evaluation and logging. Torch-free so that `--dry-run` and config errors are instant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RunConfig:
    name: str | None = None  # run directory name under `root`; None = the recipe's file stem
    root: str = "runs"  # parent folder of all run directories
    overwrite: bool = False  # allow reusing a run directory created by a different recipe
    resume: bool = True  # re-running the same command resumes from `last.ckpt`


@dataclass
class DataConfig:
    name: str = "digits"  # dataset registry name (digits, fashion_mnist, cifar10, imagefolder, ...)
    root: str = "data"  # folder holding torchvision-layout datasets / imagefolder train,val dirs
    download: bool = False  # let torchvision download a missing dataset (needs network)
    image_size: int | None = None  # resize to this many pixels; None = native (digits: 16)
    val_fraction: float = 0.1  # of the training split held out for model selection (not test)
    split_seed: int = 0  # seed of the fixed train/val partition
    train_subset: int | None = None  # cap on training images (quick runs); None = all
    batch_size: int = 128  # per device
    num_workers: int = 2  # dataloader worker processes (0 = in the main process)
    fake_size: int = 512  # number of images of the `fake` dataset (tests)
    fake_channels: int = 3  # channels of the `fake` dataset (1 = grey)


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


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # backbone registry name: resnet18, resnet50, vit_tiny, vit_small
    cifar_stem: bool | None = None  # ResNet 3x3 stem without max-pool; None = auto (<= 64 px)
    patch_size: int | None = None  # ViT patch size; None = image_size // 8 (4 px at 32 px)
    drop_path: float = 0.0  # ViT stochastic depth
    width: int | None = None  # ViT width override (None = the preset's)
    depth: int | None = None  # ViT depth override
    heads: int | None = None  # ViT heads override


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


@dataclass
class EMAConfig:
    enabled: bool | None = None  # EMA copy of the weights; None = the method's default
    # (on for diffusion methods, off for SimCLR/DINO whose teacher is already an average)
    decay: float = 0.999  # EMA decay ceiling
    warmup: bool = True  # ramp the decay as min(decay, (1 + step) / (10 + step))


@dataclass
class TrainerConfig:
    max_steps: int | None = None  # optimiser steps; give this or max_epochs
    max_epochs: int | None = None
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: int = 1  # devices per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | fsdp
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"] = "32-true"
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int = 0  # also save a periodic step-N.ckpt; 0 = only last.ckpt
    last_ckpt_every_n_steps: int = 50  # how often last.ckpt is refreshed
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    progress_bar: bool = True
    compile: bool = False  # torch.compile the network (GPU)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # NaN/Inf loss: stop the run, or skip the step


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


@dataclass
class OnlineEvalConfig:
    every_n_epochs: int = 1  # online kNN / linear evaluation period (epochs)
    every_n_steps: int = 0  # if > 0: evaluate every N steps instead of every_n_epochs
    online_knn: bool = True
    online_linear: bool = True  # linear head on detached feats, its own param group
    online_linear_lr: float | None = None  # None = optim.lr
    bank_size: int | None = 10000  # online kNN bank: at most this many training images
    val_size: int | None = None  # cap on validation images used online


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
