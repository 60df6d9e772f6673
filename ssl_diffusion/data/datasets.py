"""Datasets by name. Each builder returns the raw train and test splits (PIL image, int label)
plus a ``DataInfo``; ``build_splits`` then carves a fixed validation split out of train.

Registered: digits (sklearn, bundled: the no-download default), fashion_mnist, mnist, cifar10,
cifar100, stl10 (torchvision classes, ``data.root``, ``data.download`` default false),
imagefolder (``data.root``/train and ``data.root``/val folders), fake (torchvision FakeData);
latents (pre-extracted VAE latents, ``latents.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from ssl_diffusion.config.sections import DataConfig
from ssl_diffusion.data.imagefolder import load_imagefolder
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import DATASETS


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo


class ArrayImageDataset(Dataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, C) served as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[idx]), int(self.labels[idx])


class ResizedDataset(Dataset):
    """Resizes (shorter side) and centre-crops every image to ``size`` x ``size``."""

    def __init__(self, base: Dataset, size: int) -> None:
        from torchvision import transforms as T

        self.base = base
        self.resize = T.Compose([T.Resize(size), T.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> tuple[Image.Image, int]:
        img, label = self.base[idx]
        return self.resize(img), label


# Per-channel statistics in [0, 1] units, as commonly used (solo-learn, torchvision references).
_STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "stl10": ([0.4467, 0.4398, 0.4066], [0.2603, 0.2566, 0.2713]),
}


def _torchvision(name: str, cls_name: str, folder: str, cfg: DataConfig, native: int, channels: int):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(cfg.root).expanduser()
    splits = {}
    for split in ("train", "test"):
        kwargs = {"split": split} if cls_name == "STL10" else {"train": split == "train"}
        try:
            splits[split] = cls(root=str(root), download=cfg.download, **kwargs)
        except RuntimeError as exc:
            raise UserError(
                f"dataset `{name}` not found under {root.resolve()} (expected {folder}/ in "
                f"torchvision's layout); pass data.root=DIR, or data.download=true to fetch it"
            ) from exc
        except Exception as exc:  # corrupt archives, unreadable files
            raise UserError(f"cannot load dataset `{name}` from {root.resolve()}: {exc}") from exc
    mean, std = _STATS[name]
    classes = list(getattr(splits["train"], "classes", []))
    info = DataInfo(name, len(classes) or 10, channels, native, mean, std, classes)
    return splits["train"], splits["test"], info


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig):
    return _torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST/raw", cfg, 28, 1)


@DATASETS.register("mnist")
def mnist(cfg: DataConfig):
    return _torchvision("mnist", "MNIST", "MNIST/raw", cfg, 28, 1)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig):
    return _torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", cfg, 32, 3)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig):
    return _torchvision("cifar100", "CIFAR100", "cifar-100-python", cfg, 32, 3)


@DATASETS.register("stl10")
def stl10(cfg: DataConfig):
    return _torchvision("stl10", "STL10", "stl10_binary", cfg, 96, 3)


DIGITS_TEST_FRACTION = 0.2  # sklearn digits has no official test split: a fixed 20% (seed 0)


@DATASETS.register("digits")
def digits(cfg: DataConfig):
    """sklearn's bundled 8x8 handwritten digits (1797 images), upsampled; no download needed."""
    from sklearn.datasets import load_digits

    size = cfg.image_size or 16
    raw = load_digits()
    pixels = (raw.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    images = np.stack(
        [np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in pixels]
    )  # (1797, size, size)
    labels = raw.target
    order = np.random.default_rng(0).permutation(len(images))
    n_test = round(len(images) * DIGITS_TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    scaled = images.astype(np.float64) / 255.0
    info = DataInfo("digits", 10, 1, size, [float(scaled.mean())], [float(scaled.std())],
                    [str(i) for i in range(10)])
    train = ArrayImageDataset(images[train_idx], labels[train_idx])
    test = ArrayImageDataset(images[test_idx], labels[test_idx])
    return train, test, info


@DATASETS.register("fake")
def fake(cfg: DataConfig):
    """torchvision FakeData: random images for tests (labels carry no signal)."""
    from torchvision.datasets import FakeData

    size = cfg.image_size or 32
    shape = (cfg.fake_channels, size, size)
    train = FakeData(size=cfg.fake_size, image_size=shape, num_classes=10, random_offset=0)
    test = FakeData(size=max(cfg.fake_size // 4, 16), image_size=shape, num_classes=10,
                    random_offset=10_000_000)
    info = DataInfo("fake", 10, cfg.fake_channels, size, [0.5] * cfg.fake_channels,
                    [0.5] * cfg.fake_channels, [str(i) for i in range(10)])
    return train, test, info


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig):
    """``data.root``/train/<class>/*.png and ``data.root``/val/<class>/*.png (val = test split)."""
    return load_imagefolder(cfg)


def build_splits(cfg: DataConfig) -> Splits:
    """Train / val / test splits. Val is a fixed held-out part of train (``data.val_fraction``,
    ``data.split_seed``) used for model selection; test is only ever reported."""
    builder = DATASETS.get(cfg.name)
    train_full, test, info = builder(cfg)
    if cfg.image_size is not None and cfg.image_size != info.image_size:
        train_full = ResizedDataset(train_full, cfg.image_size)
        test = ResizedDataset(test, cfg.image_size)
        info.image_size = cfg.image_size
    n = len(train_full)
    if n == 0:
        raise UserError(f"dataset `{cfg.name}` has no training images")
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = round(n * cfg.val_fraction)
    if cfg.val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise UserError(f"data.val_fraction={cfg.val_fraction} leaves no training images (n={n})")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    return Splits(
        train=Subset(train_full, sorted(train_idx.tolist())),
        val=Subset(train_full, sorted(val_idx.tolist())),
        test=test,
        info=info,
    )
