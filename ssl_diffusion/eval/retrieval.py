"""Nearest-neighbour retrieval demo: a query image and its k most similar gallery images.

The gallery is a dataset split (default ``train``); its features come from the feature cache and
its faiss index (cosine similarity, exact, :class:`~ssl_diffusion.eval.neighbors.FaissIndex`) is
saved next to them and reused. The query is an index into a split (default ``test``) or an image
file, which is converted to the dataset's channels (grey / RGB), resized (shorter side) and
centre-cropped to its size, and normalised like the dataset. Features are those of
``load_encoder``: the sweep's chosen (layer, noise) when the run has one, else ``eval.features``.
The figure (``retrieval.png``) shows the query and its neighbours with class and similarity.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssl_diffusion.atomic import AtomicFile
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.features import FeatureExtractor, is_rank_zero
from ssl_diffusion.eval.neighbors import FaissIndex

MAX_COLUMNS = 9  # images per row of the figure


def load_query_image(path: str | Path, channels: int, size: int) -> Image.Image:
    """An image file as a PIL image with the dataset's channels, ``size`` x ``size``."""
    from torchvision import transforms as T

    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; pass a PNG/JPEG file") from None
    return T.Compose([T.Resize(size), T.CenterCrop(size)])(img)


def _class_name(info: DataInfo, label: int | None) -> str:
    if label is None or label < 0:
        return "?"
    names = info.class_names
    return names[label] if label < len(names) else str(label)


def _display(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def retrieval_figure(query: Image.Image, query_title: str, images: Sequence[Image.Image],
                     titles: Sequence[str]) -> bytes:
    """PNG bytes of the query and its neighbours in a grid (Agg canvas, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(query, query_title)] + list(zip(images, titles))
    cols = min(len(panels), MAX_COLUMNS)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(1.5 * cols, 1.75 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (ax, (img, title)) in enumerate(zip(axes, panels)):
        ax.imshow(_display(img), interpolation="nearest")
        ax.set_title(title, fontsize=7, color="tab:red" if i == 0 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def gallery_index(extractor: FeatureExtractor, gallery: str, spec: Any) -> tuple[Any, Any]:
    """(FaissIndex, FeatureSet) of the gallery split; the index is cached beside the features."""
    feats = extractor.extract(gallery, spec)
    path = None
    if extractor.cache is not None:
        path = extractor.cache.folder / f"{extractor.cache_stem(gallery, spec, None)}.faiss.npz"
        if path.is_file():
            try:
                index = FaissIndex.load(path)
                if len(index) == len(feats) and index.dim == feats.feats.shape[1]:
                    return index, feats
            except (OSError, ValueError, KeyError, RuntimeError):
                pass  # stale or partial file: rebuild
    index = FaissIndex.build(feats.feats, index="flat", normalize=True)
    if path is not None and is_rank_zero():
        with AtomicFile(path) as tmp:  # readers never see a partial index
            index.save(tmp)
    return index, feats


__all__ = ["gallery_index", "load_query_image", "retrieval_figure"]
