"""Typed configuration of the generation (FID / KID / IS) evaluation; torch-free.

Composed by the root config as ``eval.fid``; recipes override fields with ``eval.fid.<field>=...``.
The sampler fields only *override* the method's own sampler config (None keeps it), so one recipe
can report FID for several samplers without touching the training setup.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_diffusion.errors import UserError, did_you_mean

REF_SPLITS = ("train", "val", "test")  # dataset splits reference statistics may come from


def check_ref_split(split: str) -> None:
    if split not in REF_SPLITS:
        raise UserError(f"eval.fid.ref_split={split!r} is not a split; choose one of "
                        f"{', '.join(REF_SPLITS)}{did_you_mean(split, REF_SPLITS)}")


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

    def validate(self) -> None:
        """Range checks that types cannot express (one-line UserErrors)."""
        if self.n < 2:
            raise UserError(f"eval.fid.n={self.n} is invalid; FID needs at least 2 generated images")
        if self.ref_n is not None and self.ref_n < 2:
            raise UserError(f"eval.fid.ref_n={self.ref_n} is invalid; use >= 2 images or null "
                            f"(whole split)")
        if self.every_n_epochs < 0:
            raise UserError(f"eval.fid.every_n_epochs={self.every_n_epochs} is invalid; use >= 0 "
                            f"(0 = only at the end of training)")
        if self.batch_size < 1:
            raise UserError(f"eval.fid.batch_size={self.batch_size} is invalid; it must be >= 1")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"eval.fid.seed={self.seed} must be a seed in [0, 2**32 - 1]")
        check_ref_split(self.ref_split)
