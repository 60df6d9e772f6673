"""``DataInfo``: what models, transforms and evaluators need to know about a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataInfo:
    """What models and transforms need to know about a dataset."""

    name: str
    num_classes: int
    channels: int  # 1 for grey datasets; every backbone adapts its stem to this
    image_size: int  # side length after the dataset-level resize
    mean: list[float]  # per-channel, in [0, 1] units (dataset normalisation)
    std: list[float]
    class_names: list[str] = field(default_factory=list)
    kind: str = "image"  # "image" (PIL items) | "latent" (pre-extracted VAE latents, latents.py)
    latent: dict | None = None  # latent datasets: VAE path, pixel size, flip (LatentInfo); mean
    # and std above are then the per-channel latent statistics, used to decode generated latents
