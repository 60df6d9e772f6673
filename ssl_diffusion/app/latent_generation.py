"""Generation and FID/IS for latent models: sample latents -> VAE decode -> uint8 -> Inception.

The ImageNet-256 protocol of the paper (DDAE++ README: FID_10k / IS_10k with and without CFG;
LightningDiT / ADM: FID-50k against ``VIRTUAL_imagenet256_labeled.npz``):

* ``DecodedGenerator`` wraps a trained latent ``ddae``/``ddaepp`` and its VAE so that it looks
  like a pixel generator to the existing generation stage (``generation.py``): per-image seeds,
  class labels ``seed mod K``, sharding over ranks, streaming in batches (never all in memory).
  Latents are de-normalised with the training statistics (``DataInfo.mean/std``), then decoded.
* ``AdmReference`` streams the images of an ADM-evaluator reference batch (``.npz`` with
  ``arr_0`` uint8 (N, H, W, 3)) out of the zip member, batch by batch. The reference statistics
  are recomputed with *our* Inception network (the ``mu``/``sigma`` stored in ADM files come
  from the TF graph run by the ADM evaluator; mixing the two is not comparable) and cached.
* IS uses the Inception logits, which only torch-fidelity's network provides (its weights file
  as ``eval.fid.weights``); with the offline TorchScript network the result says IS is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssl_diffusion.app.generation import FIDStage, generation_protocol
from ssl_diffusion.diffusion.config import SamplerConfig
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.fid import ReferenceKey, fid_metrics, reference_stats
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.eval.inception import InceptionFeatureNet
from ssl_diffusion.models.vae import LatentVAE

ADM_FORMAT = "an ADM reference batch: .npz with arr_0 = uint8 images (N, H, W, 3)"


class DecodedGenerator:
    """A latent method + its VAE, generating [-1, 1] pixel images (N, 3, H, W)."""

    def __init__(self, method: Any, vae: LatentVAE) -> None:
        info = method.info
        if getattr(info, "kind", "image") != "latent" or not info.latent:
            raise UserError("this checkpoint was trained on pixels, not latents; use "
                            "main_sample.py for it")
        pixels = int(info.latent["image_size"])
        want = (info.channels, info.image_size, info.image_size)
        if tuple(vae.latent_shape(pixels)) != want:
            raise UserError(f"the VAE {vae.source} makes latents {vae.latent_shape(pixels)} from "
                            f"{pixels} px images but the model was trained on {want}; pass the "
                            f"VAE the latents were extracted with ({info.latent['vae']})")
        self.method, self.vae = method, vae
        self.cfg, self.ema = method.cfg, getattr(method, "ema", None)
        self.info = dataclasses.replace(info, channels=3, image_size=pixels, kind="image")
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.method.device

    # the parts of the SSLMethod contract the generation stage reads, forwarded
    @property
    def class_conditional(self) -> bool:
        return self.method.class_conditional

    @property
    def generative(self) -> bool:
        return self.method.generative

    def to(self, device: str | torch.device) -> DecodedGenerator:
        self.method.to(device)
        self.vae.to(device)
        return self

    def generate_latents(self, seeds: Sequence[int], sampler_cfg: SamplerConfig | None = None,
                         class_labels: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Raw (de-normalised) latents (N, C, h, w) of ``seeds``."""
        z = self.method.generate(seeds, sampler_cfg, class_labels=class_labels, use_ema=use_ema)
        return z.float() * self.std.to(z.device) + self.mean.to(z.device)  # (N, C, h, w)

    def generate(self, seeds: Sequence[int], sampler_cfg: SamplerConfig | None = None,
                 class_labels: Tensor | None = None, use_ema: bool = True,
                 progress: Any = None) -> Tensor:
        """Decoded images (N, 3, H, W) in [-1, 1]; image i depends on seeds[i] only."""
        return self.vae.decode(self.generate_latents(seeds, sampler_cfg, class_labels, use_ema))


class AdmReference:
    """The images of an ADM reference batch, streamed from the ``.npz`` zip member."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise UserError(f"reference batch {self.path} not found; pass {ADM_FORMAT} "
                            f"(e.g. VIRTUAL_imagenet256_labeled.npz from openai/guided-diffusion)")
        if not zipfile.is_zipfile(self.path):
            raise UserError(f"{self.path} is not an .npz archive; pass {ADM_FORMAT}")
        with zipfile.ZipFile(self.path) as z:
            names = z.namelist()
            if "arr_0.npy" not in names:
                raise UserError(f"{self.path} has no arr_0 (found {', '.join(names) or 'nothing'});"
                                f" pass {ADM_FORMAT}")
            with z.open("arr_0.npy") as f:
                shape, dtype = self._header(f)
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise UserError(f"{self.path}: arr_0 is {dtype} {shape}, expected uint8 (N, H, H, 3); "
                            f"pass {ADM_FORMAT}")
        self.n, self.resolution = int(shape[0]), int(shape[1])
        stat = self.path.stat()
        self.id = "adm-npz@" + hashlib.sha1(
            f"{self.path.resolve()}|{stat.st_size}|{shape}".encode()).hexdigest()[:10]

    @staticmethod
    def _header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
        try:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
        except ValueError as exc:
            raise UserError(f"arr_0 is not a .npy array ({exc}); pass {ADM_FORMAT}") from None
        if fortran:
            raise UserError(f"arr_0 is stored in Fortran order; pass {ADM_FORMAT} (C order)")
        return tuple(shape), dtype

    def batches(self, batch_size: int = 200, limit: int | None = None) -> Iterator[Tensor]:
        """uint8 (B, 3, H, W) batches in file order (the first ``limit`` images)."""
        n = self.n if limit is None else min(limit, self.n)
        per = self.resolution * self.resolution * 3
        with zipfile.ZipFile(self.path) as z, z.open("arr_0.npy") as f:
            self._header(f)
            done = 0
            while done < n:
                b = min(batch_size, n - done)
                raw = f.read(b * per)
                if len(raw) != b * per:
                    raise UserError(f"{self.path}: arr_0 ends after {done} images, header says "
                                    f"{self.n}; the file is truncated")
                arr = np.frombuffer(raw, dtype=np.uint8).reshape(b, self.resolution,
                                                                 self.resolution, 3)
                yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)  # (B, 3, H, W)
                done += b

    def key(self, n: int | None) -> ReferenceKey:
        return ReferenceKey(self.id, "arr_0", self.resolution, n)


def latent_fid(gen: DecodedGenerator, ref: AdmReference, seeds: Sequence[int],
               sampler_cfg: SamplerConfig, *, net: InceptionFeatureNet, fid_cfg: FIDConfig,
               batch_size: int = 64, use_ema: bool = True, class_labels: Tensor | None = None,
               rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
               progress: bool = True,
               tap: Callable[[Tensor, list[int]], None] | None = None) -> dict:
    """FID / KID / IS of the decoded images of ``seeds`` against the ADM reference batch."""
    if ref.resolution != gen.info.image_size:
        raise UserError(f"the reference batch {ref.path} holds {ref.resolution} px images but "
                        f"the model decodes to {gen.info.image_size} px; use a matching batch")
    key = ref.key(fid_cfg.ref_n)

    def compute():
        return reference_stats(lambda: ref.batches(fid_cfg.batch_size, fid_cfg.ref_n), key, net,
                               cache_dir=fid_cfg.cache_dir, batch_size=fid_cfg.batch_size,
                               kid_max_n=fid_cfg.kid_max_n)

    if barrier is not None and rank != 0:
        barrier()
    ref_stats = compute()  # rank 0 first (fills the cache), the others read it
    if barrier is not None and rank == 0:
        barrier()
    stage = FIDStage(gen.cfg, fid_cfg, net=net)
    stats = stage.generated_stats(gen, seeds, sampler_cfg, batch_size=batch_size,
                                  use_ema=use_ema, class_labels=class_labels, rank=rank,
                                  world=world, progress=progress, tap=tap)
    result = fid_metrics(stats, ref_stats, key, fid_cfg, net)
    result.update(generation_protocol(gen, seeds, sampler_cfg, use_ema, class_labels))
    result.update({"reference_batch": str(ref.path), "ref_n": ref_stats.n, "world_size": world,
                   "vae": gen.vae.source, "decoded_size": gen.info.image_size})
    return result



__all__ = ["ADM_FORMAT", "AdmReference", "DecodedGenerator", "latent_fid"]
