"""ImageFolders for tests (``train/`` and ``val/``): a class-balanced Fashion-MNIST export, and a
synthetic PNG folder that needs no data (``make_png_folder``).

The layout is the one ``data.name=imagefolder`` reads (ssl_diffusion/data/imagefolder.py):
``<root>/train/<class>/*.png`` and ``<root>/val/<class>/*.png``, 28 px grey PNGs. ``train/``
comes from Fashion-MNIST's training split, ``val/`` from its test split (imagefolder uses
``val/`` as the test split). The raw files are read with torchvision from the shared data
folder (``/work/shared/data`` or ``<repo>/../shared/data``); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_CANDIDATES = (Path("/work/shared/data"), ROOT.parent / "shared" / "data")


def shared_data_root() -> Path | None:
    """The first shared data folder holding torchvision's FashionMNIST/raw files, or None."""
    for root in SHARED_CANDIDATES:
        if (root / "FashionMNIST" / "raw").is_dir():
            return root
    return None


@dataclass
class ExportedFolder:
    root: Path  # pass as data.root
    classes: list[str]  # folder names, in label order
    n_train: int
    n_val: int


def _balanced_indices(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """The first ``per_class`` indices of every class, in dataset order (deterministic)."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    return np.concatenate(picks)


def export_fashion_mnist(out: Path, n_train: int = 2000, n_val: int = 500,
                         data_root: Path | None = None) -> ExportedFolder:
    """Write ``n_train`` train and ``n_val`` val images (equal numbers per class) under ``out``.

    Raises FileNotFoundError when no shared data folder is found (callers skip on that).
    """
    from torchvision.datasets import FashionMNIST

    data_root = data_root or shared_data_root()
    if data_root is None:
        raise FileNotFoundError("no FashionMNIST raw files under " + ", ".join(map(str, SHARED_CANDIDATES)))
    out = Path(out)
    counts = {"train": n_train, "val": n_val}
    classes: list[str] = []
    for split, train in (("train", True), ("val", False)):
        ds = FashionMNIST(root=str(data_root), train=train, download=False)
        images = ds.data.numpy()  # (N, 28, 28) uint8
        labels = ds.targets.numpy()  # (N,)
        num_classes = len(ds.classes)
        per_class = counts[split] // num_classes
        classes = [f"{c:02d}_{name.replace('/', '-').replace(' ', '_')}" for c, name in enumerate(ds.classes)]
        for idx in _balanced_indices(labels, per_class, num_classes):
            folder = out / split / classes[labels[idx]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[idx], mode="L").save(folder / f"{idx:05d}.png")
    per_train, per_val = n_train // len(classes), n_val // len(classes)
    return ExportedFolder(out, classes, per_train * len(classes), per_val * len(classes))


def make_png_folder(root: Path, classes: int = 5, train_per_class: int = 8, val_per_class: int = 3,
                    size: int = 16, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: class k is a bright square at a
    class-specific place and colour on a noisy background, so neighbours of the same class are
    the nearest ones (a kNN has something to find)."""
    rng = np.random.default_rng(seed)
    half = size // 2
    corners = [(0, 0), (0, half), (half, 0), (half, half), (half // 2, half // 2)]
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)  # (H, W, 3)
                r, c = corners[k % len(corners)]
                colour = np.array([255 * (k % 2), 255 * ((k // 2) % 2), 200], dtype=np.uint8)
                img[r:r + half, c:c + half] = colour
                Image.fromarray(img).save(folder / f"{i}.png")
    return root
