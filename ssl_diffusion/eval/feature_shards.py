"""Feature cache in float16 shards, for ImageNet-scale linear probing (``eval.features.cache``).

The default cache (``features.FeatureCache``) keeps one float32 ``.npy`` per split and spec. At
ImageNet scale (1.28M x 768 for DiT-B) that is 3.9 GB per (layer, noise); this cache halves it by
storing float16 rows in shards of ``eval.features.shard_rows`` (one file each, written
atomically), plus the labels and a JSON sidecar holding the cache key:

    <stem>.shards/part_00000.npy ...   float16 (rows, D)
    <stem>.shards/labels.npy           int64 (N,)
    <stem>.shards/meta.json            key, meta, number of shards (written last: a complete set)

Loading returns float32 features (the probe trains in float32); the float16 rounding (relative
error <= 2^-11) is far below the probe's sensitivity, and is the same for every checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.eval.feature_set import FeatureSet, is_rank_zero


class ShardedFeatureCache:
    """``FeatureCache``'s interface (``load``/``save``) over float16 shards."""

    def __init__(self, folder: Path, shard_rows: int = 100_000) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.folder, self.shard_rows = Path(folder), shard_rows

    def _dir(self, stem: str) -> Path:
        return self.folder / f"{stem}.shards"

    def load(self, stem: str, key: dict) -> FeatureSet | None:
        d = self._dir(stem)
        try:
            meta = json.loads((d / "meta.json").read_text())
            if meta.get("key") != key:
                return None
            parts = [np.load(d / f"part_{k:05d}.npy") for k in range(meta["shards"])]
            labels = np.load(d / "labels.npy")
        except (OSError, ValueError, KeyError):  # missing, partial or foreign: recompute
            return None
        feats = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        if feats.ndim != 2 or labels.shape != (feats.shape[0],):
            return None
        return FeatureSet(feats, labels.astype(np.int64), meta["meta"], from_cache=True)

    def save(self, stem: str, key: dict, fs: FeatureSet) -> None:
        if not is_rank_zero():
            return
        d = self._dir(stem)
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json").unlink(missing_ok=True)  # the set is incomplete until meta is back
        half = fs.feats.astype(np.float16)
        starts = range(0, max(len(half), 1), self.shard_rows)
        for k, start in enumerate(starts):
            part = half[start : start + self.shard_rows]
            atomic_write(d / f"part_{k:05d}.npy", lambda f, p=part: np.save(f, p))
        atomic_write(d / "labels.npy", lambda f: np.save(f, fs.labels))
        text = json.dumps({"key": key, "meta": fs.meta, "shards": len(starts),
                           "dtype": "float16"}, indent=1, sort_keys=True)
        atomic_write(d / "meta.json", lambda f: f.write(text.encode()))


__all__ = ["ShardedFeatureCache"]
