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

from ssl_diffusion.atomic import AtomicFile, atomic_write
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.features import (
    SPLITS,
    FeatureExtractor,
    describe_spec,
    encode,
    is_diffusion,
    is_rank_zero,
)

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


def _class_name(info: Any, label: int | None) -> str:
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
    from ssl_diffusion.eval.neighbors import FaissIndex

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


def _parse_query(query: str | int | Path) -> int | Path:
    if isinstance(query, int):
        return query
    text = str(query).strip()
    if text.lstrip("-").isdigit() and not Path(text).exists():
        return int(text)
    return Path(text)


def run_retrieval(ckpt: Any, query: str | int | Path, overrides: Sequence[str] = (), *,
                  k: int = 8, split: str = "test", gallery: str = "train",
                  out: str | Path | None = None, progress: bool = True,
                  batch_size: int | None = None, device: str | None = None,
                  cache: bool | str | Path = True) -> dict:
    """Retrieve the ``k`` gallery images most similar to ``query`` and draw them.

    Args:
        ckpt: checkpoint path (or ``engine.LoadedMethod``); ``overrides`` as in ``run_knn``.
        query: index into ``split`` (int or digits) or an image file path.
        k: neighbours to show (<= gallery size).
        split: split that an index query refers to.
        gallery: split searched (``train``, ``val`` or ``test``).
        out: figure path; None = ``<run_dir>/retrieval.png``.

    Returns:
        ``{"query": {...}, "neighbors": [{"index", "label", "class_name", "similarity"}],
        "gallery", "gallery_size", "features", "image"}``.
    """
    from ssl_diffusion.encoder import sweep_choice
    from ssl_diffusion.eval.runner import _extractor, load, run_dir_of

    for name, value in (("--split", split), ("--gallery", gallery)):
        if value not in SPLITS:
            raise UserError(f"{name} `{value}` is not a split; choose one of {', '.join(SPLITS)}")
    if k < 1:
        raise UserError(f"--k {k} must be >= 1")
    loaded = load(ckpt, overrides)
    ex = _extractor(loaded, progress, batch_size, device, cache)
    kwargs = {}
    chosen = sweep_choice(loaded.path) if is_diffusion(loaded.method) else None
    if chosen and not any(o.startswith("eval.features.") for o in overrides):
        kwargs = {"layer": chosen["layer"], "noise": chosen["noise"],
                  "noise_unit": chosen["noise_unit"]}
    spec = ex.spec(**kwargs)
    parsed = _parse_query(query)
    info = loaded.info
    if isinstance(parsed, int):
        data = ex.dataset(split)
        if not 0 <= parsed < len(data):
            raise UserError(f"query index {parsed} is outside the {split} split (0..{len(data) - 1})")
        image, label = data[parsed]
        source = f"{split}[{parsed}]"
    else:
        if not parsed.is_file():
            raise UserError(f"query `{query}` is neither an index of the {split} split nor an "
                            f"existing image file")
        image, label, source = load_query_image(parsed, info.channels, info.image_size), None, \
            str(parsed)
    n_gallery = len(ex.dataset(gallery))  # checked before the gallery's features are computed
    if k > n_gallery:
        raise UserError(f"--k {k} is larger than the {gallery} gallery ({n_gallery} images); "
                        f"lower --k")
    index, gallery_feats = gallery_index(ex, gallery, spec)
    x = ex.transform(image).unsqueeze(0).to(ex.device)  # (1, C, H, W)
    method = loaded.method.to(ex.device).eval()
    q = encode(method, spec, x).cpu()  # (1, D)
    res = index.search(q, k)
    gallery_data = ex.dataset(gallery)
    neighbors, images, titles = [], [], []
    for sim, idx in zip(res.similarities[0].tolist(), res.indices[0].tolist()):
        img, lab = gallery_data[idx][0], int(gallery_feats.labels[idx])
        neighbors.append({"index": idx, "label": lab, "class_name": _class_name(info, lab),
                          "similarity": sim})
        images.append(img)
        titles.append(f"{_class_name(info, lab)}  {sim:.3f}\n{gallery}[{idx}]")
    out = Path(out) if out is not None else run_dir_of(loaded) / "retrieval.png"
    q_title = f"query {source if len(source) < 24 else Path(source).name}"
    if label is not None:
        q_title += f"\n{_class_name(info, int(label))}"
    if is_rank_zero():
        out.parent.mkdir(parents=True, exist_ok=True)
        png = retrieval_figure(image, q_title, images, titles)
        atomic_write(out, lambda f: f.write(png))
    return {"query": {"source": source, "label": None if label is None else int(label),
                      "class_name": None if label is None else _class_name(info, int(label))},
            "neighbors": neighbors, "gallery": gallery, "gallery_size": len(index),
            "features": describe_spec(spec, loaded.cfg, kwargs.get("noise_unit")),
            "image": str(out)}


__all__ = ["gallery_index", "load_query_image", "retrieval_figure", "run_retrieval"]
