"""Frozen features of a dataset split from a checkpoint: batched, deterministic, cached on disk.

Evaluators take features, not models (``knn.py``, ``linear.py``); this module produces them.

* **What is extracted.** Diffusion methods (``ddae``/``ddaepp``) expose the pooled output of any
  layer at any noise level sigma (a :class:`FeatureSpec`); several layers at one noise level come
  from one forward pass (:meth:`FeatureExtractor.extract_layers`, for the layer x noise sweep).
  The feature noise is seeded per image by its content, so features do not depend on the batch
  size or order. SimCLR / DINO have one representation (the backbone output; DINO: the teacher's);
  layer and noise do not apply and the metadata says so.
* **Splits.** ``train`` (the training split minus the held-out validation images), ``val`` and
  ``test`` exactly as ``data.datasets.build_splits`` carves them, with the dataset's eval
  transform (``data.transforms.eval_transform`` with the method's normalisation).
* **Cache.** ``<run_dir>/features/<split>-<layer>-<sigma>-<ema>-<key>.{feats.npy,labels.npy,json}``.
  The key hashes everything the features depend on: the checkpoint's content (sha1 of the file,
  memoised by path, size and mtime), the split, the layer, sigma, EMA/raw weights, the feature
  seed, the transform, the data settings and the model/diffusion config, and the row limit. Files
  are written atomically (temporary file + rename; the ``.json`` last, as the commit marker) and
  only by rank 0 under ``torch.distributed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.config import to_dict
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.data.module import ViewDataset, first_n
from ssl_diffusion.data.transforms import eval_transform, normalization
from ssl_diffusion.diffusion.noise import from_sigma
from ssl_diffusion.errors import UserError, did_you_mean
from ssl_diffusion.eval.feature_set import FeatureSet, is_rank_zero
from ssl_diffusion.eval.feature_shards import ShardedFeatureCache
from ssl_diffusion.eval.spec import FeatureSpec

if TYPE_CHECKING:  # annotations only: eval sits below methods
    from ssl_diffusion.methods.base import SSLMethod

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the cached layout or the extraction semantics change
# Config sections that cannot change the features of a split (training length, optimiser,
# logging, sampling, the evaluators' own settings); everything else is part of the cache key.
_KEY_IGNORED = ("run", "logger", "trainer", "optim", "sampler", "eval")
_DATA_IGNORED = ("batch_size", "num_workers", "download")
_HASHES: dict[tuple[str, int, int], str] = {}


# --------------------------------------------------------------------------- what is extracted


def describe_spec(spec: FeatureSpec, method: SSLMethod,
                  noise_unit: str | None = None) -> dict[str, Any]:
    """JSON-ready description of ``spec`` stored beside every result."""
    cfg = method.cfg
    if spec.layer is None:
        name = method.feature_source
        return {"method": cfg.method, "layer": None, "noise": None, "use_ema": None,
                "source": f"extract_features(): {name}; eval.features (layer, noise) does not "
                          f"apply to {cfg.method} and was ignored"}
    unit = noise_unit or cfg.eval.features.noise_unit
    return {"method": cfg.method, "layer": spec.layer, "noise": from_sigma(spec.sigma, unit),
            "noise_unit": unit, "sigma": spec.sigma, "logsnr": from_sigma(spec.sigma, "logsnr"),
            "use_ema": spec.use_ema, "seed": cfg.eval.features.seed,
            "source": "mean-pooled layer output at one noise level, per-image content-seeded "
                      "noise"}


@torch.no_grad()
def encode(method: SSLMethod, spec: FeatureSpec, x: Tensor) -> Tensor:
    """(N, D) float32 features of one normalised image batch ``x`` (N, C, H, W)."""
    if spec.layer is None:
        return method.extract_features(x).float()
    return method.extract_features(x, spec.layer, spec.sigma, spec.use_ema).float()


# --------------------------------------------------------------------------- results and cache


def checkpoint_sha1(path: str | Path) -> str:
    """sha1 of a checkpoint file, memoised by (resolved path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


atomic_save = atomic_write  # former name, kept for importers


class FeatureCache:
    """``.npy`` features + labels and a ``.json`` sidecar per (checkpoint, split, spec, ...)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _paths(self, stem: str) -> tuple[Path, Path, Path]:
        base = self.folder / stem
        return (base.with_name(stem + ".feats.npy"), base.with_name(stem + ".labels.npy"),
                base.with_name(stem + ".json"))

    def load(self, stem: str, key: dict) -> FeatureSet | None:
        feats_path, labels_path, meta_path = self._paths(stem)
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            feats, labels = np.load(feats_path), np.load(labels_path)
        except (OSError, ValueError):  # missing, partial or foreign files: recompute
            return None
        if feats.ndim != 2 or labels.shape != (feats.shape[0],) or feats.dtype != np.float32:
            return None
        return FeatureSet(feats, labels.astype(np.int64), meta["meta"], from_cache=True)

    def save(self, stem: str, key: dict, fs: FeatureSet) -> None:
        if not is_rank_zero():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        feats_path, labels_path, meta_path = self._paths(stem)
        atomic_write(feats_path, lambda f: np.save(f, fs.feats))
        atomic_write(labels_path, lambda f: np.save(f, fs.labels))
        text = json.dumps({"key": key, "meta": fs.meta}, indent=1, sort_keys=True)
        atomic_write(meta_path, lambda f: f.write(text.encode()))


def _key_hash(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- extraction


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class FeatureExtractor:
    """Extracts (and caches) features of the train / val / test splits of a loaded checkpoint.

    Args:
        loaded: an ``engine.LoadedMethod`` (``engine.load_method(path, overrides)``).
        cache_dir: feature cache folder; None = ``<run_dir>/features``; False = no cache.
        batch_size: images per forward pass; None = ``data.batch_size``. Results do not depend
            on it (per-image noise seeds; float round-off aside).
        device: ``cpu`` / ``cuda``; None = cuda when available.
        progress: show a tqdm bar per extraction.
    """

    def __init__(self, loaded: Any, *, cache_dir: str | Path | None | bool = None,
                 batch_size: int | None = None, device: str | None = None,
                 progress: bool = True) -> None:
        self.loaded = loaded
        self.method, self.cfg, self.info = loaded.method, loaded.cfg, loaded.info
        folder = Path(cache_dir) if cache_dir else Path(loaded.path).parent / "features"
        self.cache: Any = None
        if cache_dir is not False and self.cfg.eval.features.cache == "fp16_shards":
            self.cache = ShardedFeatureCache(folder, self.cfg.eval.features.shard_rows)
        elif cache_dir is not False:
            self.cache = FeatureCache(folder)
        self.batch_size = batch_size or self.cfg.data.batch_size
        if self.batch_size < 1:
            raise UserError(f"batch size {self.batch_size} must be >= 1")
        self.device = torch.device(device or default_device())
        self.progress = progress
        self.transform = eval_transform(self.info, self.method.normalization)
        norm = normalization(self.info, self.method.normalization)
        self.transform_id = (f"eval_transform({self.method.normalization}: mean={norm['mean']}, "
                             f"std={norm['std']}, {self.info.image_size} px)")
        self._splits = None
        self._sha1: str | None = None

    # ------------------------------------------------------------------ data
    @property
    def splits(self) -> Any:
        """The dataset splits of the checkpoint's data config (built once)."""
        if self._splits is None:
            splits = build_splits(self.cfg.data)
            a, b = splits.info, self.info
            if (a.num_classes, a.channels, a.image_size) != (b.num_classes, b.channels,
                                                             b.image_size):
                raise UserError(
                    f"data `{self.cfg.data.name}` now has {a.num_classes} classes, {a.channels} "
                    f"channels, {a.image_size} px, but the checkpoint was trained on "
                    f"{b.num_classes}/{b.channels}/{b.image_size}; check data.* overrides")
            self._splits = splits
        return self._splits

    def dataset(self, split: str, limit: int | None = None) -> Any:
        """(PIL image, label) dataset of ``split``, truncated to its first ``limit`` rows."""
        if split not in SPLITS:
            raise UserError(f"unknown split `{split}`; choose one of {', '.join(SPLITS)}"
                            f"{did_you_mean(split, SPLITS)}")
        if limit is not None and limit < 1:
            raise UserError(f"limit={limit} must be >= 1 (or None for the whole split)")
        data = getattr(self.splits, split)
        if len(data) == 0:
            raise UserError(f"the {split} split of `{self.cfg.data.name}` is empty"
                            + ("; set data.val_fraction > 0" if split == "val" else ""))
        return first_n(data, limit)

    # ------------------------------------------------------------------ keys
    @property
    def checkpoint_sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = checkpoint_sha1(self.loaded.path)
        return self._sha1

    def cache_key(self, split: str, spec: FeatureSpec, limit: int | None) -> dict:
        config = {k: v for k, v in to_dict(self.cfg).items() if k not in _KEY_IGNORED}
        config["data"] = {k: v for k, v in config["data"].items() if k not in _DATA_IGNORED}
        return {
            "format": CACHE_FORMAT,
            "checkpoint_sha1": self.checkpoint_sha1,
            "split": split,
            "limit": limit,
            "layer": spec.layer,
            "sigma": None if spec.sigma is None else float(spec.sigma).hex(),
            "use_ema": spec.use_ema,
            "seed": self.cfg.eval.features.seed if spec.layer is not None else None,
            "transform": self.transform_id,
            "config": config,
        }

    def cache_stem(self, split: str, spec: FeatureSpec, limit: int | None) -> str:
        return f"{split}-{spec.tag}-{_key_hash(self.cache_key(split, spec, limit))}"

    def _meta(self, split: str, spec: FeatureSpec, n: int, dim: int, limit: int | None) -> dict:
        return {"split": split, "size": n, "dim": dim, "limit": limit,
                "features": describe_spec(spec, self.method), "transform": self.transform_id,
                "checkpoint": {"path": str(self.loaded.path), "sha1": self.checkpoint_sha1}}

    # ------------------------------------------------------------------ extraction
    def spec(self, **kwargs: Any) -> FeatureSpec:
        """The method's ``feature_spec`` (kwargs: layer, noise, unit, use_ema)."""
        return self.method.feature_spec(**kwargs)

    def extract(self, split: str, spec: FeatureSpec | None = None, *,
                limit: int | None = None) -> FeatureSet:
        """Features of ``split`` (default spec: the config's ``eval.features``)."""
        spec = self.spec() if spec is None else spec
        if spec.layer is None:
            return self._extract(split, [spec], limit)[0]
        return self.extract_layers(split, [spec.layer], spec.sigma, spec.use_ema,
                                   limit=limit)[spec.layer]

    def extract_layers(self, split: str, layers: Sequence[str], sigma: float,
                       use_ema: bool | None, *, limit: int | None = None) -> dict[str, FeatureSet]:
        """Features of several layers at one noise level; uncached layers share one pass."""
        if not self.method.generative:
            raise UserError(f"method `{self.cfg.method}` has no feature layers to tap")
        if not layers:
            raise UserError("no feature layers given; name at least one layer")
        use_ema = bool(use_ema and self.method.ema is not None)
        specs = [FeatureSpec(self.method.net.check_layer(name), float(sigma), use_ema)
                 for name in dict.fromkeys(layers)]
        return {s.layer: fs for s, fs in zip(specs, self._extract(split, specs, limit))}

    def _extract(self, split: str, specs: list[FeatureSpec], limit: int | None) -> list[FeatureSet]:
        out: dict[int, FeatureSet] = {}
        if self.cache is not None:
            for i, s in enumerate(specs):
                hit = self.cache.load(self.cache_stem(split, s, limit), self.cache_key(split, s,
                                                                                         limit))
                if hit is not None:
                    out[i] = hit
        todo = [i for i in range(len(specs)) if i not in out]
        if todo:
            computed = self._compute(split, [specs[i] for i in todo], limit)
            for i, (feats, labels) in zip(todo, computed):
                fs = FeatureSet(feats, labels, self._meta(split, specs[i], *feats.shape, limit))
                if self.cache is not None:
                    self.cache.save(self.cache_stem(split, specs[i], limit),
                                    self.cache_key(split, specs[i], limit), fs)
                out[i] = fs
        return [out[i] for i in range(len(specs))]

    @torch.no_grad()
    def _compute(self, split: str, specs: list[FeatureSpec],
                 limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """One pass over the split computing every spec (all share sigma and weights)."""
        data = ViewDataset(self.dataset(split, limit), self.transform)
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=False,
                            num_workers=self.cfg.data.num_workers,
                            pin_memory=self.device.type == "cuda")
        method = self.method.to(self.device).eval()
        chunks: list[list[np.ndarray]] = [[] for _ in specs]
        labels: list[np.ndarray] = []
        tag = specs[0].tag if len(specs) == 1 else f"{len(specs)} layers, sigma {specs[0].sigma:.4g}"
        bar = tqdm(loader, desc=f"features {split} ({tag})", unit="batch",
                   disable=not self.progress, leave=False)
        for x, y in bar:
            x = x.to(self.device, non_blocking=True)
            if specs[0].layer is None:
                feats = [encode(method, specs[0], x)]  # (B, D)
            else:
                taps = method.extract_features_multi(x, [s.layer for s in specs], specs[0].sigma,
                                                     specs[0].use_ema)
                feats = [taps[s.layer] for s in specs]  # each (B, D_layer)
            for store, f in zip(chunks, feats):
                store.append(f.float().cpu().numpy())
            labels.append(np.asarray(y, dtype=np.int64))
        bar.close()
        y_all = np.concatenate(labels)
        return [(np.ascontiguousarray(np.concatenate(c), dtype=np.float32), y_all) for c in chunks]


__all__ = [
    "SPLITS",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureSet",
    "FeatureSpec",
    "atomic_save",
    "checkpoint_sha1",
    "describe_spec",
    "encode",
]
