"""The retrieval demo: the ``k`` gallery images nearest to a query, drawn as one strip.

``main_retrieval.py`` calls ``run_retrieval``; the ranking (``eval.retrieval.gallery_index``, a
faiss/torch index over cached features) and the drawing are library code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssl_diffusion.app.encoder import sweep_choice
from ssl_diffusion.app.evaluate import Checkpoint, _extractor, load, run_dir_of
from ssl_diffusion.app.os_errors import check_writable
from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.features import SPLITS, describe_spec, encode, is_rank_zero
from ssl_diffusion.eval.retrieval import (
    _class_name,
    gallery_index,
    load_query_image,
    retrieval_figure,
)


def _parse_query(query: str | int | Path) -> int | Path:
    if isinstance(query, int):
        return query
    text = str(query).strip()
    if text.lstrip("-").isdigit() and not Path(text).exists():
        return int(text)
    return Path(text)


def run_retrieval(ckpt: Checkpoint, query: str | int | Path, overrides: Sequence[str] = (), *,
                  k: int = 8, split: str = "test", gallery: str = "train",
                  out: str | Path | None = None, progress: bool = True,
                  batch_size: int | None = None, device: str | None = None,
                  cache: bool | str | Path = True) -> dict:
    """Retrieve the ``k`` gallery images most similar to ``query`` and draw them.

    Args:
        ckpt: checkpoint path (or a ``LoadedMethod``); ``overrides`` as in ``run_knn``.
        query: index into ``split`` (int or digits) or an image file path.
        k: neighbours to show (<= gallery size).
        split: split that an index query refers to.
        gallery: split searched (``train``, ``val`` or ``test``).
        out: figure path; None = ``<run_dir>/retrieval.png``.

    Returns:
        ``{"query": {...}, "neighbors": [{"index", "label", "class_name", "similarity"}],
        "gallery", "gallery_size", "features", "image"}``.
    """
    for name, value in (("--split", split), ("--gallery", gallery)):
        if value not in SPLITS:
            raise UserError(f"{name} `{value}` is not a split; choose one of {', '.join(SPLITS)}")
    if k < 1:
        raise UserError(f"--k {k} must be >= 1")
    loaded = load(ckpt, overrides)
    ex = _extractor(loaded, progress, batch_size, device, cache)
    kwargs = {}
    chosen = sweep_choice(loaded.path) if loaded.method.generative else None
    if chosen and not any(o.startswith("eval.features.") for o in overrides):
        kwargs = {"layer": chosen["layer"], "noise": chosen["noise"],
                  "unit": chosen["noise_unit"]}
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
    out = Path(out) if out is not None else run_dir_of(loaded) / "retrieval.png"
    if is_rank_zero():  # before the gallery's (slow) features: the figure can be written
        check_writable(out.parent, out.name, "pass --out PATH in a writable folder")
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
            "features": describe_spec(spec, loaded.method, kwargs.get("unit")),
            "image": str(out)}


__all__ = ["run_retrieval"]
