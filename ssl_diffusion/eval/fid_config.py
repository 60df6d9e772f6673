"""Typed configuration of the generation (FID / KID / IS) evaluation; torch-free.

Composed by the root config as ``eval.fid``; recipes override fields with ``eval.fid.<field>=...``.
The sampler fields only *override* the method's own sampler config (None keeps it), so one recipe
can report FID for several samplers without touching the training setup.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FIDConfig:
    enabled: bool = False  # run the generation evaluation at all (costly: n samples + Inception)
    n: int = 50_000  # generated images; 50k is the standard FID-50k (Heusel et al. 2017, EDM)
    ref_n: int | None = None  # reference images from ref_split; None = the whole split (standard)
    ref_split: str = "train"  # dataset split the reference statistics come from (CIFAR FID: train)
    sampler: str | None = None  # sampler name override; None = the method's sampler config
    steps: int | None = None  # sampler steps (network evaluations per step depend on the sampler)
    cfg: float | None = None  # classifier-free guidance scale override; None = method's setting
    seed: int = 0  # image i is drawn with seed `seed + i`: results independent of batch/GPU count
    every_n_epochs: int = 0  # evaluate during training every k epochs; 0 = only at the end
    batch_size: int = 200  # images per Inception forward pass (memory only; results unchanged)
    weights: str | None = None  # Inception weights: torch-fidelity .pth or TorchScript .pt path
    cache_dir: str = ".cache/ssl_diffusion/fid"  # where reference statistics (.npz) are cached
    kid_subset_size: int = 1000  # KID subset size (Binkowski et al. 2018; torch-fidelity default)
    kid_subsets: int = 100  # number of KID subsets averaged (torch-fidelity default)
    kid_max_n: int = 10_000  # features kept per set for KID (uniform bottom-k sample; memory cap)
    is_splits: int = 10  # Inception Score splits (Salimans et al. 2016 protocol)
    use_ema: bool = True  # sample from the EMA weights (standard for diffusion FID)
