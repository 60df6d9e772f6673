"""View pipelines shared by every method, built from lightly transforms and sized from the data.

Presets: ``simclr`` (2 views), ``dino`` (2 global + N local views), ``diffusion`` (1 flipped
view; geometric views for contrastive self-distillation are made on the tensor batch inside the
method), ``eval`` (no augmentation). The normalisation is chosen by the method: ``dataset``
(per-channel mean/std) for SimCLR/DINO, ``symmetric`` ([-1, 1]) for diffusion models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torchvision import transforms as T

from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError, require

PRESETS = ("simclr", "dino", "diffusion", "eval")
Normalization = Literal["dataset", "symmetric"]


def normalization(info: DataInfo, kind: Normalization) -> dict[str, list[float]]:
    if kind == "symmetric":
        return {"mean": [0.5] * info.channels, "std": [0.5] * info.channels}
    return {"mean": list(info.mean), "std": list(info.std)}


class LatentView:
    """Latent items (V, C, h, w): view 0, or the stored flip copy (view 1) with probability p.

    Latents are normalised by the dataset; flipping a latent tensor is not flipping the image,
    which is why the extraction stores the flipped image's own latent."""

    def __init__(self, flip_prob: float = 0.0, as_list: bool = True) -> None:
        self.flip_prob, self.as_list = flip_prob, as_list

    def __call__(self, z: Any) -> Any:
        use_flip = z.shape[0] > 1 and self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob
        view = z[1 if use_flip else 0]  # (C, h, w)
        return [view] if self.as_list else view


def eval_transform(info: DataInfo, kind: Normalization) -> Callable:
    if info.kind == "latent":
        return LatentView(0.0, as_list=False)
    norm = normalization(info, kind)
    return T.Compose([T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])


def _blur_prob(aug: Any, size: int) -> float:
    # Blur destroys most of the signal of tiny images (solo-learn disables it for CIFAR).
    if aug.blur_prob is not None:
        return aug.blur_prob
    return 0.5 if size >= 64 else 0.0


def local_crop_size(aug: Any, size: int) -> int:
    """DINO local crops keep the 96/224 ratio of the paper unless told otherwise."""
    if aug.local_crop_size is not None:
        return aug.local_crop_size
    return max(8, round(size * 3 / 7))


class SingleView:
    """Wraps a transform so that every preset returns a list of views."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> list:
        return [self.transform(img)]


def train_transform(preset: str, info: DataInfo, aug: Any, kind: Normalization) -> Callable:
    """A callable mapping one PIL image to a list of view tensors."""
    size = info.image_size
    norm = normalization(info, kind)
    if info.kind == "latent":
        if preset not in ("diffusion", "eval"):
            raise UserError(f"aug.preset={preset} needs images; latents take the diffusion or "
                            f"eval preset (data.name=latents)")
        return LatentView(aug.hflip_prob if preset == "diffusion" else 0.0)
    if preset == "simclr":
        # lightly is optional: only the simclr/dino view pipelines use it
        SimCLRTransform = require("lightly.transforms", "aug.preset=simclr").SimCLRTransform
        return SimCLRTransform(
            input_size=size,
            cj_prob=aug.cj_prob,
            cj_strength=aug.cj_strength,
            min_scale=aug.min_scale,
            random_gray_scale=aug.gray_prob,
            gaussian_blur=_blur_prob(aug, size),
            hf_prob=aug.hflip_prob,
            normalize=norm,
        )
    if preset == "dino":
        DINOTransform = require("lightly.transforms", "aug.preset=dino").DINOTransform

        blur = _blur_prob(aug, size)
        return DINOTransform(
            global_crop_size=size,
            global_crop_scale=tuple(aug.global_crop_scale),
            local_crop_size=local_crop_size(aug, size),
            local_crop_scale=tuple(aug.local_crop_scale),
            n_local_views=aug.n_local_views,
            hf_prob=aug.hflip_prob,
            cj_prob=aug.cj_prob,
            cj_strength=aug.cj_strength,
            random_gray_scale=aug.gray_prob,
            gaussian_blur=(blur * 2, blur * 0.2, blur) if blur else (0.0, 0.0, 0.0),
            solarization_prob=aug.solarize_prob,
            normalize=norm,
        )
    if preset == "diffusion":
        return SingleView(
            T.Compose([T.RandomHorizontalFlip(aug.hflip_prob), T.ToTensor(),
                       T.Normalize(norm["mean"], norm["std"])])
        )
    if preset == "eval":
        return SingleView(eval_transform(info, kind))
    raise UserError(f"unknown augmentation preset `{preset}`; choose one of {', '.join(PRESETS)}")
