"""Tiny stand-ins of the latent path: a synthetic ImageFolder and a random AutoencoderKL folder
(diffusers ``save_pretrained``; no weights downloaded, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 2, per_class: int = 6, seed: int = 0) -> Path:
    """``root``/<class>/*.png of mixed non-square sizes; class k is tinted towards channel k."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            img = rng.integers(0, 120, size=(h, w, 3))
            img[..., k % 3] += 120
            Image.fromarray(img.astype(np.uint8)).save(root / f"c{k}" / f"{i:03d}.png")
    return root


def make_vae_folder(path: Path, latent_channels: int = 4) -> Path:
    from ssl_diffusion.models.vae import tiny_autoencoder

    tiny_autoencoder(latent_channels).save_pretrained(str(path))
    return path
