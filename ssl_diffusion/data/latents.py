"""Pre-extracted VAE latents on disk, and the ``latents`` dataset that trains on them.

The latent path (DDAE++ spec §4/§7.2, LightningDiT) encodes every image once
(``main_extract_latents.py``) and trains with no VAE in the loop. One extracted split is a folder:

    manifest.json                  what was extracted: VAE, image size, flip, shard size, classes,
                                   latent shape, the image list's hash (a resume must match it)
    shard_00000.labels.npy         int64 (n,) class labels of the shard's images
    shard_00000.latents.npy        float16 (n, V, C, h, w) posterior means; V = 2 with the
                                   horizontal-flip copy (view 1 = the flipped image's latent)
    stats.json                     per-channel mean / std over every stored latent (float64 sums)

A shard is finished when its ``.latents.npy`` exists (both files are written to a temporary
name and renamed, labels first). ``data.name=latents`` reads ``data.root``/train and
``data.root``/val, normalises each channel with the training split's statistics
(LightningDiT's channel-wise latent normalisation) and serves (V, C, h, w) float tensors; the
``latent`` view transform picks view 0 or, with probability ``aug.hflip_prob``, the flip copy.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.config.sections import DataConfig
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import DATASETS

FORMAT = "ssl_diffusion-latents-v1"
MANIFEST, STATS = "manifest.json", "stats.json"


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The ADM / DiT ImageNet preprocessing: halve with a box filter while the short side is at
    least 2x the target, resize the short side to ``size`` (bicubic), centre-crop (floor offset)."""
    img = image.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    ratio = size / min(img.size)
    img = img.resize((round(img.size[0] * ratio), round(img.size[1] * ratio)),
                     resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


@dataclass
class LatentManifest:
    """The parameters of one extraction (``manifest.json``); a resume must agree with them."""

    vae: str  # model.vae.path used to encode
    image_size: int  # pixels after the ADM centre crop
    latent_shape: list[int]  # [C, h, w] of one latent
    flip: bool  # a horizontal-flip copy is stored as view 1
    shard_size: int  # images per shard (the last one may be shorter)
    num_images: int
    classes: list[str]
    files_hash: str  # sha1 of the sorted relative image paths and labels
    format: str = FORMAT

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_size)

    @property
    def views(self) -> int:
        return 2 if self.flip else 1

    def save(self, directory: Path) -> None:
        text = json.dumps(asdict(self), indent=1)
        atomic_write(directory / MANIFEST, lambda f: f.write(text), binary=False)

    @classmethod
    def load(cls, directory: Path) -> LatentManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise UserError(f"{directory} holds no extracted latents ({MANIFEST} missing); run "
                            f"main_extract_latents.py --images IMAGES/{directory.name} "
                            f"--out {directory}")
        try:
            data = json.loads(path.read_text())
            manifest = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"{path} is not a latent manifest ({exc}); re-run the extraction "
                            f"into a new folder") from None
        if manifest.format != FORMAT:
            raise UserError(f"{path} has format {manifest.format!r}, expected {FORMAT!r}")
        return manifest


def finished_shards(directory: Path, manifest: LatentManifest) -> list[int]:
    return [k for k in range(manifest.num_shards)
            if (directory / f"{shard_name(k)}.latents.npy").is_file()]


@dataclass
class LatentStats:
    """Per-channel statistics of the stored latents (``stats.json``)."""

    mean: list[float]
    std: list[float]
    count: int  # latents (images x views) they were computed from

    @classmethod
    def load(cls, directory: Path) -> LatentStats:
        path = directory / STATS
        if not path.is_file():
            raise UserError(f"{path} is missing: the extraction into {directory} did not finish; "
                            f"run the same main_extract_latents.py command again to complete it")
        return cls(**json.loads(path.read_text()))


def compute_stats(directory: Path, manifest: LatentManifest) -> LatentStats:
    """Exact per-channel mean/std over every shard (float64 sums, streamed shard by shard)."""
    c = manifest.latent_shape[0]
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for k in range(manifest.num_shards):
        z = np.load(directory / f"{shard_name(k)}.latents.npy", mmap_mode="r")  # (n, V, C, h, w)
        z64 = np.asarray(z, dtype=np.float64)
        s1 += z64.sum(axis=(0, 1, 3, 4))
        s2 += (z64**2).sum(axis=(0, 1, 3, 4))
        count += z64.shape[0] * z64.shape[1]
    n = count * manifest.latent_shape[1] * manifest.latent_shape[2]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return LatentStats(mean.tolist(), std.tolist(), count)


class LatentShards(Dataset):
    """Memory-mapped latents of one split: item = ((V, C, h, w) float32 normalised, label)."""

    def __init__(self, directory: Path, mean: list[float], std: list[float],
                 expect: LatentManifest | None = None) -> None:
        self.directory = directory
        self.manifest = m = LatentManifest.load(directory)
        # the flip copy may differ: evaluation only ever reads view 0
        if expect is not None and (m.latent_shape != expect.latent_shape or m.vae != expect.vae
                                   or m.classes != expect.classes):
            raise UserError(f"latents in {directory} (shape {m.latent_shape}, VAE {m.vae}, "
                            f"{len(m.classes)} classes) do not match the training split's "
                            f"(shape {expect.latent_shape}, VAE {expect.vae}, "
                            f"{len(expect.classes)} classes); extract both with the same VAE")
        done = finished_shards(directory, m)
        if len(done) != m.num_shards:
            raise UserError(f"{directory}: {len(done)} of {m.num_shards} shards extracted; run the "
                            f"same main_extract_latents.py command again to finish")
        self._latents: list[np.ndarray | None] = [None] * m.num_shards
        self.labels = np.concatenate([np.load(directory / f"{shard_name(k)}.labels.npy")
                                      for k in range(m.num_shards)])
        self.offsets = [k * m.shard_size for k in range(m.num_shards)]
        if len(self.labels) != m.num_images:
            raise UserError(f"{directory}: {len(self.labels)} labels for {m.num_images} images; "
                            f"the shards are corrupt: extract into a new folder")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def _shard(self, k: int) -> np.ndarray:
        arr = self._latents[k]
        if arr is None:  # opened lazily: DataLoader workers each map the files themselves
            arr = np.load(self.directory / f"{shard_name(k)}.latents.npy", mmap_mode="r")
            want = (self.manifest.views, *self.manifest.latent_shape)
            if arr.ndim != 5 or tuple(arr.shape[1:]) != want:
                raise UserError(f"{self.directory / shard_name(k)}.latents.npy has shape "
                                f"{tuple(arr.shape)}, expected (n, {', '.join(map(str, want))}) "
                                f"from {MANIFEST}; extract into a new folder")
            self._latents[k] = arr
        return arr

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[Tensor, int]:
        k = bisect_right(self.offsets, idx) - 1
        z = torch.from_numpy(np.array(self._shard(k)[idx - self.offsets[k]], dtype=np.float32))
        return (z - self.mean) / self.std, int(self.labels[idx])  # (V, C, h, w)


@dataclass
class LatentInfo:
    """What decoding generated latents needs (stored in ``DataInfo.latent``)."""

    vae: str  # the VAE the latents came from
    image_size: int  # decoded pixel size
    flip: bool
    extra: dict[str, Any] = field(default_factory=dict)


@DATASETS.register("latents")
def latents(cfg: DataConfig):
    """``data.root``/train and ``data.root``/val extracted by ``main_extract_latents.py``."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root} does not exist; point it at the --out folder of "
                        f"main_extract_latents.py (holding train/ and val/)")
    if cfg.image_size is not None:
        raise UserError("data.image_size does not apply to data.name=latents (the latent size "
                        "is fixed at extraction); remove the override")
    stats = LatentStats.load(root / "train")
    train = LatentShards(root / "train", stats.mean, stats.std)
    m = train.manifest
    test = LatentShards(root / "val", stats.mean, stats.std, expect=m)
    c, h, w = m.latent_shape
    if h != w:
        raise UserError(f"latents in {root / 'train'} are {h}x{w}; the denoisers need square inputs")
    info = DataInfo("latents", len(m.classes), c, h, stats.mean, stats.std, list(m.classes),
                    kind="latent", latent=asdict(LatentInfo(m.vae, m.image_size, m.flip)))
    return train, test, info


__all__ = ["LatentManifest", "LatentShards", "LatentStats", "adm_center_crop", "compute_stats",
           "finished_shards", "shard_name"]
