"""Latent extraction: an ImageFolder split -> ADM centre crop -> VAE posterior mean -> shards.

``main_extract_latents.py`` calls ``extract_latents``. Resumable: the manifest is written first,
every shard goes to a temporary file that is renamed when complete, so after an interruption
the finished shards are kept, a partial shard (temporary file) is deleted and redone, and the
result is the same bytes as an uninterrupted run (shards are encoded in fixed batches, so a
redone shard sees exactly the batches it would have seen). Several processes (``--devices N``,
``torchrun`` or SLURM, through Lightning Fabric as training uses it):
rank r encodes shards r, r + W, ...; the statistics are computed once every shard exists.
See ``data/latents.py`` for the format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, Dataset

from ssl_diffusion.atomic import AtomicFile, atomic_write
from ssl_diffusion.data.imagefolder import CheckedImageFolder
from ssl_diffusion.data.latents import (
    STATS,
    LatentManifest,
    LatentStats,
    adm_center_crop,
    compute_stats,
    finished_shards,
    shard_name,
)
from ssl_diffusion.errors import UserError
from ssl_diffusion.models.vae import LatentVAE


@dataclass
class ExtractionResult:
    out_dir: str
    num_images: int
    num_shards: int
    shards_encoded: int  # by this call (0 when everything was already there)
    stats: LatentStats | None  # None while other ranks' shards are missing


def _files_hash(samples: list[tuple[Path, int]], root: Path) -> str:
    h = hashlib.sha1()
    for path, label in samples:
        h.update(f"{path.relative_to(root).as_posix()}\t{label}\n".encode())
    return h.hexdigest()


def _load(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(adm_center_crop(img, size))  # (H, W, 3) uint8
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"unreadable image {path}: {exc}") from None


class _CroppedImages(Dataset):
    """Images ``lo..hi`` of the folder, ADM-cropped to uint8 (H, W, 3) (decoded in workers)."""

    def __init__(self, samples: list[tuple[Path, int]], lo: int, hi: int, size: int) -> None:
        self.paths, self.size = [samples[i][0] for i in range(lo, hi)], size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return _load(self.paths[i], self.size)


def _to_model(batch: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
    return x / 127.5 - 1.0


def _check_manifest(out: Path, want: LatentManifest) -> None:
    have = LatentManifest.load(out)
    diff = [k for k in ("vae", "image_size", "latent_shape", "flip", "shard_size", "num_images",
                        "files_hash") if getattr(have, k) != getattr(want, k)]
    if diff:
        raise UserError(f"{out} holds latents of another extraction (differs in: {', '.join(diff)}); "
                        f"use a new --out folder or delete {out}")


def _remove_partial(out: Path) -> None:
    for tmp in out.glob(".shard_*.tmp"):  # AtomicFile names: .<target>.<random>.tmp
        tmp.unlink(missing_ok=True)


def extract_latents(images: str | Path, out: str | Path, vae: LatentVAE, *,
                    image_size: int = 256, flip: bool = False, shard_size: int = 1024,
                    batch_size: int = 64, workers: int = 0, rank: int = 0, world: int = 1,
                    on_images: Callable[[int], None] | None = None,
                    barrier: Callable[[], None] | None = None) -> ExtractionResult:
    """Encode ``images``/<class>/* into shards under ``out``; returns what is there afterwards.

    ``on_images(n)`` is called after every batch with the number of images encoded (a progress
    bar). ``barrier`` (several processes) is called before the statistics are computed.
    ``workers`` DataLoader processes decode and crop the images (JPEG decoding dominates at
    ImageNet scale); the result does not depend on it.
    """
    root = Path(images).expanduser()
    out = Path(out).expanduser()
    if shard_size < 1 or batch_size < 1 or workers < 0:
        raise UserError(f"--shard-size ({shard_size}) and --batch-size ({batch_size}) must be >= 1 "
                        f"and --workers ({workers}) >= 0")
    if shard_size % batch_size:
        raise UserError(f"--shard-size {shard_size} must be a multiple of --batch-size "
                        f"{batch_size} (every shard is encoded in the same fixed batches)")
    folder = CheckedImageFolder(root, None, None)
    manifest = LatentManifest(
        vae=vae.source, image_size=image_size, latent_shape=list(vae.latent_shape(image_size)),
        flip=flip, shard_size=shard_size, num_images=len(folder.samples),
        classes=list(folder.classes), files_hash=_files_hash(folder.samples, root))
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").exists():
        _check_manifest(out, manifest)
    elif rank == 0:
        manifest.save(out)
    if rank == 0:
        _remove_partial(out)
    if barrier is not None:
        barrier()
    done = set(finished_shards(out, manifest))
    encoded = 0
    for k in range(rank, manifest.num_shards, world):
        if k in done:
            continue
        _encode_shard(folder.samples, k, manifest, vae, out, batch_size, on_images, workers)
        encoded += 1
    if barrier is not None:
        barrier()
    stats = None
    if len(finished_shards(out, manifest)) == manifest.num_shards:
        stats = compute_stats(out, manifest)
        if rank == 0:
            text = json.dumps(asdict(stats), indent=1)
            atomic_write(out / STATS, lambda f: f.write(text), binary=False)
    return ExtractionResult(str(out), manifest.num_images, manifest.num_shards, encoded, stats)


def _encode_shard(samples: list[tuple[Path, int]], k: int, manifest: LatentManifest,
                  vae: LatentVAE, out: Path, batch_size: int,
                  on_images: Callable[[int], None] | None, workers: int) -> None:
    lo = k * manifest.shard_size
    hi = min(lo + manifest.shard_size, manifest.num_images)
    latents = np.empty((hi - lo, manifest.views, *manifest.latent_shape), dtype=np.float16)
    # In order, fixed batches: the same shard always sees the same batches (byte-identical).
    loader = DataLoader(
        _CroppedImages(samples, lo, hi, manifest.image_size), batch_size=batch_size,
        shuffle=False, num_workers=workers, collate_fn=np.stack)
    for b, pixels in enumerate(loader):
        start = lo + b * batch_size
        stop = start + len(pixels)
        x = _to_model(pixels)  # (B, 3, H, W) in [-1, 1]
        latents[start - lo : stop - lo, 0] = vae.encode(x).cpu().numpy()  # (B, C, h, w)
        if manifest.flip:
            latents[start - lo : stop - lo, 1] = vae.encode(x.flip(-1)).cpu().numpy()
        if on_images is not None:
            on_images(stop - start)
    labels = np.array([samples[i][1] for i in range(lo, hi)], dtype=np.int64)
    name = shard_name(k)
    atomic_write(out / f"{name}.labels.npy", lambda f: np.save(f, labels))
    with AtomicFile(out / f"{name}.latents.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, latents)  # the rename of this file marks the shard finished


@dataclass
class Launched:
    """This process's place in a (possibly multi-process) extraction."""

    rank: int
    world: int
    barrier: Callable[[], None] | None  # None on one process
    device: torch.device


def launch(devices: int = 1, accelerator: str = "auto", num_nodes: int = 1) -> Launched:
    """Start ``devices x num_nodes`` processes with Lightning Fabric -- the distributed engine
    under the training Trainer (the same DDP strategy, launcher and cluster detection: plain
    ``--devices N``, ``torchrun`` and SLURM all work) -- and return this process's rank."""
    world = devices * num_nodes
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                    strategy="ddp" if world > 1 else "auto")
    fabric.launch()
    return Launched(fabric.global_rank, fabric.world_size,
                    fabric.barrier if fabric.world_size > 1 else None, fabric.device)


__all__ = ["ExtractionResult", "Launched", "extract_latents", "launch"]
